"""The guest machinery in pvdesc/commands/prove/guest.py: the newc initramfs, /proc/iomem
parsing, the
process-group timeout.  The UEFI + ACPI boot with the SSDT from the initrd now runs through
``pvdesc prove`` (tests/integration/test_prove_boot.py), which also checks QEMU's RAM against the
description before booting.
"""

from __future__ import annotations

import subprocess

from helpers import program

from pvdesc.commands.prove import guest
from pvdesc.core.ranges import Range
from pvdesc.read import guest_output
from pvdesc.tools import proc


def test_newc_archive_lists_with_cpio() -> None:
    data = guest.acpi_table_archive({"ssdt.aml": b"SSDT-bytes"}) + guest.initramfs(b"bb")
    # GNU cpio reads only the first archive; list it and the second one separately.
    first = guest.acpi_table_archive({"ssdt.aml": b"SSDT-bytes"})
    listing = subprocess.run(
        [program("cpio"), "-it", "--quiet"],
        input=first,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    assert listing.split() == [
        "kernel",
        "kernel/firmware",
        "kernel/firmware/acpi",
        "kernel/firmware/acpi/ssdt.aml",
    ]
    second = data[len(first) :]
    listing = subprocess.run(
        [program("cpio"), "-it", "--quiet"],
        input=second,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    assert set(listing.split()) == {"bin", "dev", "proc", "sys", "bin/busybox", "init"}
    assert len(first) % 4 == 0


def test_parse_iomem_nesting() -> None:
    text = (
        "08050000-0805ffff : pnp 00:01\n"
        "40000000-7fffffff : System RAM\n"
        "  40210000-4157ffff : Kernel code\n"
    )
    got = guest_output.parse_iomem(text)
    assert got == (
        guest_output.IomemEntry(Range(0x08050000, 0x10000), "pnp 00:01", 0),
        guest_output.IomemEntry(Range(0x40000000, 0x40000000), "System RAM", 0),
        guest_output.IomemEntry(Range(0x40210000, 0x4157FFFF - 0x40210000 + 1), "Kernel code", 1),
    )


def test_boot_run_kills_on_timeout() -> None:
    """guest.boot runs QEMU as proc.run with stderr merged: a timeout ends the whole group."""
    res = proc.run(["sh", "-c", "sleep 30 & sleep 30; echo never"], timeout=1, merge_stderr=True)
    assert res.timed_out and "never" not in res.stdout
