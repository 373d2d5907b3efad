"""pvdesc prove for real: Debian's arm64 kernel under QEMU TCG (direct DT, EDK2 + DT, EDK2 + ACPI).

One boot per scenario, shared by the tests that read it (module-scoped).  Each test checks
the guest's own lines (``/proc/iomem``, the kernel log, the DT it saw) directly, not only
prove's verdict, so a wrong judge cannot pass them.  The negative controls build unsafe
layouts with the library (the CLI refuses them) and must be reported as failures.
Guest parts: ``scripts/fetch-guest`` (run by ``scripts/setup --test``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import EXAMPLES, ROOT, cli_in_process, cli_subprocess

from pvdesc.commands.prove import guest, judging
from pvdesc.commands.prove import report as prove_report
from pvdesc.commands.prove import tcg as prove
from pvdesc.commands.prove import verdict as prove_verdict
from pvdesc.core.model import Boot, Describe
from pvdesc.core.ranges import Range
from pvdesc.description.load import load
from pvdesc.errors import LayoutError
from pvdesc.layout import allocate as layout
from pvdesc.read import guest_output
from pvdesc.tools import qemu

pytestmark = pytest.mark.boot

DATA = ROOT / "tests" / "data" / "prove"
#: Generous: the machine may be shared.  Nothing here asserts on time.
TIMEOUT = 300.0
SCENARIOS = {
    "linux-reserved": EXAMPLES / "linux-carve-reserved.yaml",
    "linux-exclude": DATA / "linux-carve-exclude.yaml",
    "uefi-exclude": DATA / "uefi-carve-exclude.yaml",
    "uefi-hole": DATA / "uefi-hole.yaml",
    "uefi-acpi": EXAMPLES / "uefi-acpi-hole.yaml",
}
_EFI_LINE = re.compile(r"efi:\s+0x([0-9a-f]+)-0x([0-9a-f]+) \[([^|]+)\|")


@pytest.fixture(scope="module")
def proved() -> Iterator[Callable[[str], prove_verdict.ProveReport]]:
    cache: dict[str, prove_verdict.ProveReport] = {}

    def get(name: str) -> prove_verdict.ProveReport:
        if name not in cache:
            cache[name] = prove.prove_file(SCENARIOS[name], timeout=TIMEOUT)
        return cache[name]

    yield get


def unsafe(boot: Boot) -> tuple[prove_verdict.ProveReport, layout.Layout]:
    """The negative control: linux-carve-reserved's /memory + /reserved-memory, booted via UEFI.

    ``placement.resolve_describe`` refuses reserved-memory under UEFI; the Layout is built by
    hand from the linux-dt one, with only the boot mode changed.
    """
    loaded = load(EXAMPLES / "linux-carve-reserved.yaml")
    desc = loaded.description._replace(boot=boot)
    safe = layout.allocate(loaded.description)
    bad = safe._replace(
        description=desc, describe=Describe.RESERVED_MEMORY, reserved=(safe.region,)
    )
    with pytest.raises(LayoutError, match="no-map-under-uefi"):
        layout.verify(bad)  # the library's own check knows it is unsafe
    return prove.prove(loaded._replace(description=desc), bad, guest.guest_parts(), TIMEOUT), bad


@pytest.fixture(scope="module")
def unsafe_acpi() -> tuple[prove_verdict.ProveReport, layout.Layout]:
    return unsafe(Boot.UEFI_ACPI)


@pytest.fixture(scope="module")
def unsafe_dt() -> tuple[prove_verdict.ProveReport, layout.Layout]:
    return unsafe(Boot.UEFI_DT)


def touching(entries: tuple[guest_output.IomemEntry, ...], r: Range) -> list[str]:
    """The /proc/iomem lines (any depth) that share a 64 KiB granule with ``r``."""
    g = r.granules()
    return [guest_output.iomem_line(e) for e in entries if e.range.overlaps(g)]


def efi_lines_over(serial: str, r: Range) -> list[tuple[str, str]]:
    """(type, line) of every UEFI memory map line (efi=debug) overlapping ``r``."""
    out = []
    for line in serial.splitlines():
        m = _EFI_LINE.search(line)
        if m and int(m[1], 16) <= r.last and r.base <= int(m[2], 16):
            out.append((m[3].strip(), line.strip()))
    return out


# --- linux-dt, describe reserved-memory -----------------------------------------------------


def test_linux_dt_reserved_memory_is_reserved_inside_ram(
    proved: Callable[[str], prove_verdict.ProveReport],
) -> None:
    rep = proved("linux-reserved")
    region = rep.layout.region
    assert region == Range(0xBFFF0000, 0x10000)
    # The guest printed exactly one line over the region: a top-level nomap "reserved".
    assert touching(rep.boot.iomem, region) == ["bfff0000-bfffffff : reserved"]
    # ... directly above System RAM, inside the /memory node's span.
    top = [e for e in rep.boot.iomem if e.depth == 0]
    assert any(e.name == "System RAM" and e.range.end == region.base for e in top)
    assert [n.range for n in rep.layout.memory_nodes] == [Range(0x40000000, 2 << 30)]
    # The DT the kernel saw: QEMU's rewritten /memory is the layout's, the no-map child is ours.
    assert [(m.label, m.range) for m in rep.guest_dt.memory] == [
        ("memory@40000000", Range(0x40000000, 2 << 30))
    ]
    assert rep.guest_dt.reserved == (
        guest_output.DtReservation("stolen-time@bfff0000", region, True),
    )
    assert [g.status for g in rep.granules] == [prove_verdict.Status.RESERVED]
    assert rep.passed, rep.failures
    text = prove_report.to_text(rep)
    assert "granule     0xbfff0000-0xbfffffff: reserved (nomap): pass" in text
    assert text.endswith("verdict: PASS: the guest never counts the region as RAM, and sees it "
                         "as described\n")  # fmt: skip


# --- exclude and hole/none: nothing over the region -----------------------------------------


@pytest.mark.parametrize("name", ["linux-exclude", "uefi-exclude", "uefi-hole"])
def test_no_system_ram_over_the_region(
    proved: Callable[[str], prove_verdict.ProveReport], name: str
) -> None:
    rep = proved(name)
    lay = rep.layout
    region = lay.region
    assert touching(rep.boot.iomem, region) == []  # not present at all
    ram = [e.range for e in rep.boot.iomem if e.name == "System RAM"]
    assert ram, "the guest printed no System RAM: /proc/iomem was not captured"
    assert all(any(u.contains(r) for u in lay.usable_ram) for r in ram)
    if lay.placement == "carve":
        # Exclude: the guest's RAM (System RAM and nomap) ends exactly where the region begins.
        top = [e for e in rep.boot.iomem if e.depth == 0 and e.name in ("System RAM", "reserved")]
        assert max(e.range.end for e in top) == region.base
    if lay.description.boot.uefi:
        assert efi_lines_over(rep.boot.serial, region) == []
        assert "efi: EFI v2.70 by EDK II" in rep.boot.serial
    assert [g.status for g in rep.granules] == [prove_verdict.Status.ABSENT]
    assert rep.passed, rep.failures


def test_linux_dt_hole_none_numa_through_the_cli() -> None:
    res = cli_subprocess(
        "prove", str(DATA / "linux-hole-numa.yaml"), "--format", "json", "--timeout", str(TIMEOUT),
        timeout=TIMEOUT + 60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "pass" and doc["placement"] == "hole" and doc["describe"] == "none"
    region = Range(doc["region"][0], doc["region"][1] - doc["region"][0])
    assert region == Range(0x08050000, 0x10000)
    iomem = guest_output.parse_iomem("\n".join(doc["iomem"]))
    assert touching(iomem, region) == []
    assert any(e.name == "System RAM" for e in iomem)
    # Two NUMA nodes, end to end, as the description and QEMU's -numa say.
    assert "memory@40000000/numa-node-id: 00 00 00 00" in doc["devicetree"]
    assert "memory@60000000/numa-node-id: 00 00 00 01" in doc["devicetree"]
    assert {c["name"]: c["verdict"] for c in doc["checks"]} == {
        "boot-path": "pass",
        "memory": "pass",
    }
    assert "-numa" in doc["qemu"] and doc["granules"][0]["status"] == "absent"


# --- uefi-acpi, describe acpi ---------------------------------------------------------------


def test_uefi_acpi_ssdt_installed_and_claims_region(
    proved: Callable[[str], prove_verdict.ProveReport],
) -> None:
    rep = proved("uefi-acpi")
    region = rep.layout.region
    ids = rep.layout.description.acpi
    serial = rep.boot.serial
    # Linux's initrd table upgrade installed our table (docs/boot-evidence.md §5).
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
    assert touching(rep.boot.iomem, region) == ["08050000-0805ffff : pnp 00:01"]
    ram = [e.range for e in rep.boot.iomem if e.name == "System RAM"]
    assert ram and not any(r.overlaps(region) for r in ram)
    assert all(any(u.contains(r) for u in rep.layout.usable_ram) for r in ram)
    assert "ACPI: Interpreter enabled" in serial
    assert [g.status for g in rep.granules] == [prove_verdict.Status.PNP]
    assert rep.passed, rep.failures


# --- negative controls ----------------------------------------------------------------------


def test_negative_control_reserved_memory_under_uefi_acpi_fails(
    unsafe_acpi: tuple[prove_verdict.ProveReport, layout.Layout],
) -> None:
    rep, bad = unsafe_acpi
    region = bad.region
    # The guest really uses the region as RAM: EDK2 ignored /reserved-memory, ACPI has no DT.
    over = [e for e in rep.boot.iomem if e.name == "System RAM" and e.range.overlaps(region)]
    assert over, touching(rep.boot.iomem, region)
    assert [g.status for g in rep.granules] == [prove_verdict.Status.SYSTEM_RAM]
    assert not rep.passed
    assert rep.failures[0] == "granule 0xbfff0000-0xbfffffff is System RAM"
    assert "verdict: FAIL: granule 0xbfff0000-0xbfffffff is System RAM" in prove_report.to_text(rep)


def test_negative_control_reserved_memory_under_uefi_dt_fails(
    unsafe_dt: tuple[prove_verdict.ProveReport, layout.Layout],
) -> None:
    """Measured: Linux honours the DT's no-map even under UEFI (``reserved``), but EDK2 built
    its memory map from /memory alone and gave the region a RAM type, so firmware used it."""
    rep, bad = unsafe_dt
    region = bad.region
    kinds = {kind for kind, _ in efi_lines_over(rep.boot.serial, region)}
    assert kinds and not kinds <= judging.EFI_NOT_RAM, kinds
    assert touching(rep.boot.iomem, region) == ["bfff0000-bfffffff : reserved"]
    assert [g.status for g in rep.granules] == [prove_verdict.Status.FIRMWARE_RAM]
    assert not rep.passed
    assert rep.failures[0] == "granule 0xbfff0000-0xbfffffff is RAM in the UEFI memory map"


def test_cli_exits_1_on_a_failing_proof(
    unsafe_acpi: tuple[prove_verdict.ProveReport, layout.Layout],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rep, _ = unsafe_acpi
    monkeypatch.setattr(prove, "prove_file", lambda *a, **k: rep)
    code, out, err = cli_in_process(["prove", "unsafe.yaml", "--format", "json"], capsys)
    assert code == 1 and err == ""
    doc = json.loads(out)
    assert doc["verdict"] == "fail" and doc["granules"][0]["status"] == "system-ram"
    assert any(e["line"].endswith(": System RAM") for e in doc["granules"][0]["evidence"])


def test_memory_mismatch_on_a_real_boot_is_reported(
    proved: Callable[[str], prove_verdict.ProveReport],
) -> None:
    """Judge the reserved-memory boot against the exclude layout of the same bank: the guest's
    RAM (2 GiB) is not that layout's /memory (2 GiB - 64 KiB), and the region is not absent."""
    rep = proved("linux-reserved")
    desc = rep.layout.description
    other = layout.allocate(
        desc._replace(stolen_time=desc.stolen_time._replace(describe=Describe.EXCLUDE))
    )
    again = judging.judge(other, rep.boot)
    assert not again.passed
    memory = next(c for c in again.checks if c.name == "memory")
    assert not memory.passed
    assert "shows 0x40000000-0xbfffffff" in memory.message
    assert [g.status for g in again.granules] == [prove_verdict.Status.RESERVED]
    assert not again.granules[0].passed


# --- timeout ----------------------------------------------------------------------------------


def qemu_processes_with(marker: str) -> list[int]:
    """PIDs of running processes whose command line mentions ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and qemu.QEMU in cmdline:
            pids.append(int(proc.name))
    return pids


def test_timeout_kills_the_guest(tmp_path: Path) -> None:
    """A kernel image of zeros never powers off: the guest is killed at the timeout."""
    hang = tmp_path / "never-powers-off.img"
    hang.write_bytes(bytes(64 << 10))
    res = cli_subprocess(
        "prove", str(EXAMPLES / "linux-carve-reserved.yaml"), "--kernel", str(hang),
        "--timeout", "5",
    )  # fmt: skip
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == (
        "pvdesc: error: qemu-system-aarch64: guest did not power off within 5 s (QEMU's process "
        "group was killed); last line: no output\n"
    )
    assert qemu_processes_with(str(hang)) == []
