"""A real arm64 guest: Debian's kernel under QEMU TCG + EDK2, ACPI, our SSDT from the initrd.

Boot without ``-dtb``: QEMU rewrites ``/memory`` from ``-m`` and EDK2 needs QEMU's
full DT (e2e-boot.md), so the description's RAM must be exactly what ``-m``
gives; :func:`test_description_ram_matches_qemu` proves that first.
Guest parts come from ``scripts/fetch-guest`` (run by ``scripts/setup --test``).
"""

from __future__ import annotations

import re
import struct
import subprocess

import libfdt
import pytest
from acpi_helpers import outputs, plan_example

from pvdesc import build, guest
from pvdesc.model import Range

pytestmark = pytest.mark.boot

EXAMPLE = "uefi-acpi-hole"
#: -m 1G: RAM 0x40000000 + 1 GiB, exactly examples/uefi-acpi-hole.yaml's memory[0].
MACHINE = guest.Machine(
    memory=1 << 30, smp=2, uefi=True, append="console=ttyAMA0 acpi=force panic=-1"
)


def memory_nodes(dtb: bytes) -> list[Range]:
    """Every ``device_type = "memory"`` node's ``reg`` (2 address + 2 size cells), sorted."""
    fdt = libfdt.Fdt(dtb)
    out = []
    node = 0
    depth = 0
    while True:
        try:
            node, depth = fdt.next_node(node, depth)
        except libfdt.FdtException:
            break
        if depth < 0:
            break
        prop = fdt.getprop(node, "device_type", quiet=(libfdt.NOTFOUND,))
        if isinstance(prop, int) or bytes(prop) != b"memory\0":
            continue
        reg = bytes(fdt.getprop(node, "reg"))
        for i in range(0, len(reg), 16):
            base, size = struct.unpack_from(">QQ", reg, i)
            out.append(Range(base, size))
    return sorted(out)


@pytest.fixture(scope="module")
def planned() -> build.BuildResult:
    return plan_example(EXAMPLE)


@pytest.fixture(scope="module")
def booted(planned: build.BuildResult) -> guest.BootResult:
    parts = guest.find_parts()
    ssdt = outputs(planned)[f"{EXAMPLE}.ssdt.aml"]
    initrd = guest.acpi_table_archive({"ssdt.aml": ssdt}) + guest.initramfs(
        parts.busybox.read_bytes()
    )
    return guest.boot(MACHINE, parts, initrd)


def test_description_ram_matches_qemu(planned: build.BuildResult) -> None:
    qemu_nodes = memory_nodes(guest.dump_dtb(MACHINE))
    ours = memory_nodes(outputs(planned)[f"{EXAMPLE}.dtb"])
    assert qemu_nodes == [Range(guest.QEMU_VIRT_RAM_BASE, MACHINE.memory)]
    assert ours == qemu_nodes
    assert not any(r.overlaps(planned.layout.region) for r in qemu_nodes)


def test_guest_installs_ssdt_and_claims_region(
    planned: build.BuildResult, booted: guest.BootResult
) -> None:
    region = planned.layout.region
    ids = planned.layout.description.acpi
    serial = booted.serial
    # Linux's initrd table upgrade installed our table (e2e-boot.md).
    assert re.search(
        rf"ACPI: Table Upgrade: install \[SSDT-{re.escape(ids.oem_id)}-\s*"
        rf"{re.escape(ids.oem_table_id)}\s*\]",
        serial,
    ), "table upgrade line missing"
    # drivers/pnp/system.c reserved exactly the region for a PNP0C02 device.
    assert re.search(
        rf"system 00:[0-9a-f]+: \[mem {region.base:#010x}-{region.last:#010x}\] has been reserved",
        serial,
    ), "pnp system reservation line missing"
    claims = [e for e in booted.iomem if e.range == region]
    assert claims and all(re.fullmatch(r"pnp 00:[0-9a-f]+", e.name) for e in claims), claims
    ram = [e.range for e in booted.iomem if e.name == "System RAM"]
    assert ram, "the guest printed no System RAM: /proc/iomem was not captured"
    assert not any(r.overlaps(region) for r in ram)
    # And every byte of System RAM lies in RAM the description gave the guest.
    usable = planned.layout.usable_ram
    assert all(any(u.contains(r) for u in usable) for r in ram)


def test_newc_archive_lists_with_cpio() -> None:
    data = guest.acpi_table_archive({"ssdt.aml": b"SSDT-bytes"}) + guest.initramfs(b"bb")
    # GNU cpio reads only the first archive; list it and the second one separately.
    first = guest.acpi_table_archive({"ssdt.aml": b"SSDT-bytes"})
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=first, capture_output=True, check=True, timeout=30
    ).stdout.decode()
    assert listing.split() == [
        "kernel",
        "kernel/firmware",
        "kernel/firmware/acpi",
        "kernel/firmware/acpi/ssdt.aml",
    ]
    second = data[len(first) :]
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=second, capture_output=True, check=True, timeout=30
    ).stdout.decode()
    assert set(listing.split()) == {"bin", "dev", "proc", "sys", "bin/busybox", "init"}
    assert len(first) % 4 == 0


def test_parse_iomem_nesting() -> None:
    text = (
        "08050000-0805ffff : pnp 00:01\n"
        "40000000-7fffffff : System RAM\n"
        "  40210000-4157ffff : Kernel code\n"
    )
    got = guest.parse_iomem(text)
    assert got == (
        guest.IomemEntry(Range(0x08050000, 0x10000), "pnp 00:01", 0),
        guest.IomemEntry(Range(0x40000000, 0x40000000), "System RAM", 0),
        guest.IomemEntry(Range(0x40210000, 0x4157FFFF - 0x40210000 + 1), "Kernel code", 1),
    )


def test_run_group_kills_on_timeout() -> None:
    res = guest.run_group(["sh", "-c", "sleep 30 & sleep 30; echo never"], timeout=1)
    assert res.timed_out and "never" not in res.output
