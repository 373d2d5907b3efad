"""ACPI inputs of pvdesc check: SRAT and SSDT binaries compiled with iasl in the test."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from helpers import cli_subprocess, dtc, memory, program, root

from pvdesc.audit import check
from pvdesc.core.findings import Severity
from pvdesc.core.model import Target
from pvdesc.core.ranges import Range
from pvdesc.errors import AcpiError
from pvdesc.read import acpitables, dtb


def iasl(tmp: Path, name: str, text: str) -> Path:
    src = tmp / f"{name}.asl"
    src.write_text(text)
    subprocess.run(
        [program("iasl"), "-vs", "-p", str(tmp / name), str(src)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return tmp / f"{name}.aml"


def _mem_affinity(domain: int, base: int, length: int, enabled: bool) -> str:
    return f"""
[0001]                      Subtable Type : 01 [Memory Affinity]
[0001]                             Length : 28
[0004]                   Proximity Domain : {domain:08X}
[0002]                          Reserved1 : 0000
[0008]                       Base Address : {base:016X}
[0008]                     Address Length : {length:016X}
[0004]                          Reserved2 : 00000000
[0004]              Flags (decoded below) : {int(enabled):08X}
                                  Enabled : {int(enabled)}
                            Hot Pluggable : 0
                             Non-Volatile : 0
[0008]                          Reserved3 : 0000000000000000
"""


def srat(tmp: Path, entries: list[tuple[int, int, int, bool]]) -> Path:
    text = """
[0004]                          Signature : "SRAT"
[0004]                       Table Length : 00000000
[0001]                           Revision : 03
[0001]                           Checksum : 00
[0006]                             Oem ID : "TESTVM"
[0008]                       Oem Table ID : "PVSRAT  "
[0004]                       Oem Revision : 00000001
[0004]                    Asl Compiler ID : "INTL"
[0004]              Asl Compiler Revision : 20200925
[0004]                     Table Revision : 00000001
[0008]                           Reserved : 0000000000000000

[0001]                      Subtable Type : 03 [GICC Affinity]
[0001]                             Length : 12
[0004]                   Proximity Domain : 00000000
[0004]                 Acpi Processor UID : 00000000
[0004]              Flags (decoded below) : 00000001
                                  Enabled : 1
[0004]                       Clock Domain : 00000000
"""
    text += "".join(_mem_affinity(*e) for e in entries)
    return iasl(tmp, "srat", text)


def ssdt(tmp: Path, descriptors: str, device: str = "PVTM") -> Path:
    return iasl(
        tmp,
        "ssdt",
        f"""DefinitionBlock ("", "SSDT", 2, "TESTVM", "PVTIME  ", 0x00000001)
{{
    Scope (\\_SB) {{
        Device ({device}) {{
            Name (_HID, EisaId ("PNP0C02"))
            Name (_UID, "PVTIME")
            Name (_CRS, ResourceTemplate () {{
                {descriptors}
            }})
        }}
    }}
}}
""",
    )


def qword(base: int, size: int) -> str:
    return (
        "QWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadOnly, "
        f"0x0, {base:#x}, {base + size - 1:#x}, 0x0, {size:#x},,, , AddressRangeReserved, "
        "TypeStatic)"
    )


REGION = Range(0x090A0000, 0x10000)


@pytest.fixture
def ram_dtb(tmp_path: Path) -> dtb.DeviceTree:
    return dtb.load(dtc(root(memory(0x40000000, 0x80000000)), tmp_path))


def target() -> Target:
    return check.target_from_region("0x090a0000:64K", 4)


def test_srat_parsed(tmp_path: Path) -> None:
    table = acpitables.load(
        srat(tmp_path, [(0, 0x40000000, 0x40000000, True), (1, 0x80000000, 0x1000, False)])
    )
    assert table.signature == "SRAT" and table.oem_table_id == "PVSRAT"
    got = [(m.index, m.proximity_domain, m.range, m.enabled) for m in table.memory_affinity]
    assert got == [
        (1, 0, Range(0x40000000, 0x40000000), True),
        (2, 1, Range(0x80000000, 0x1000), False),
    ]


def test_srat_covers_region(tmp_path: Path, ram_dtb: dtb.DeviceTree) -> None:
    table = acpitables.load(
        srat(
            tmp_path,
            [
                (0, 0x40000000, 0x40000000, True),
                (1, 0x09000000, 0x01000000, True),
                (2, 0x09000000, 0x01000000, False),  # disabled: Linux skips it
            ],
        )
    )
    found = [f for f in check.check(ram_dtb, target(), acpi=[table]) if f.code.startswith("srat")]
    assert [(f.code, f.severity, f.source) for f in found] == [
        (
            "srat-covers-region",
            Severity.ERROR,
            f"{tmp_path / 'srat.aml'} SRAT entry[2] (Memory Affinity)",
        )
    ]


def test_ssdt_claim_decoded_like_acpiexec(tmp_path: Path) -> None:
    path = ssdt(
        tmp_path, qword(0x48000000, 0x10000) + "\nMemory32Fixed (ReadOnly, 0x50000000, 0x20000)"
    )
    table = acpitables.load(path)
    assert [(c.device, c.index, c.range) for c in table.claims] == [
        ("PVTM", 0, Range(0x48000000, 0x10000)),
        ("PVTM", 1, Range(0x50000000, 0x20000)),
    ]
    # Independent oracle: ACPICA's own resource decoder (docs/acpi.md §4.4).
    out = subprocess.run(
        [program("acpiexec"), "-b", "resources \\_SB.PVTM", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    mins = [int(m, 16) for m in re.findall(r"Address Minimum : ([0-9A-Fa-f]+)", out)]
    fixed = [int(m, 16) for m in re.findall(r"\bAddress : ([0-9A-Fa-f]+)", out)]
    assert mins[0] == 0x48000000 and fixed[0] == 0x50000000


def test_ssdt_claim_matches_and_mismatch(tmp_path: Path, ram_dtb: dtb.DeviceTree) -> None:
    good = acpitables.load(ssdt(tmp_path, qword(REGION.base, REGION.size)))
    found = check.check(ram_dtb, target(), acpi=[good])
    (ok,) = [f for f in found if f.code.startswith("ssdt")]
    assert ok.code == "ssdt-claim-matches" and ok.severity is Severity.INFO
    assert ok.source.endswith("SSDT PVTM._CRS")
    bad = acpitables.load(ssdt(tmp_path, qword(0x48000000, 0x10000)))
    found = check.check(ram_dtb, target(), acpi=[bad])
    (warn,) = [f for f in found if f.code.startswith("ssdt")]
    assert warn.code == "ssdt-claim-mismatch" and warn.severity is Severity.WARNING
    assert warn.range == Range(0x48000000, 0x10000)
    assert check.verdict(found) == "safe"


def test_other_device_claiming_the_region_is_a_mismatch(
    tmp_path: Path, ram_dtb: dtb.DeviceTree
) -> None:
    table = acpitables.load(ssdt(tmp_path, qword(0x09000000, 0x01000000), device="MBRD"))
    found = [f for f in check.check(ram_dtb, target(), acpi=[table]) if f.code.startswith("ssdt")]
    assert [(f.code, f.source.split()[-1]) for f in found] == [("ssdt-claim-mismatch", "MBRD._CRS")]


def test_corrupt_tables_refused(tmp_path: Path) -> None:
    data = bytearray(ssdt(tmp_path, qword(REGION.base, REGION.size)).read_bytes())
    data[-3] ^= 0x55
    with pytest.raises(AcpiError, match="checksum"):
        acpitables.parse(bytes(data), "x.aml")
    with pytest.raises(AcpiError, match="truncated"):
        acpitables.parse(bytes(data[:20]), "x.aml")
    with pytest.raises(AcpiError, match="Length"):
        acpitables.parse(bytes(data[:60]), "x.aml")


def test_cli_acpi(tmp_path: Path) -> None:
    dtb_path = dtc(root(memory(0x40000000, 0x80000000)), tmp_path)
    table = srat(tmp_path, [(0, 0x09000000, 0x01000000, True)])
    claim = ssdt(tmp_path, qword(REGION.base, REGION.size))
    res = cli_subprocess("check", "--dtb", str(dtb_path), "--region", "0x090a0000:64K",
                         "--vcpus", "2", "--boot", "uefi-acpi", "--acpi", str(table),
                         str(claim))  # fmt: skip
    assert res.returncode == 1
    assert "error: srat-covers-region" in res.stdout and "ssdt-claim-matches" in res.stdout
    (tmp_path / "junk.aml").write_bytes(b"junk")
    res = cli_subprocess("check", "--dtb", str(dtb_path), "--region", "0x090a0000:64K",
                         "--vcpus", "2", "--acpi", str(tmp_path / "junk.aml"))  # fmt: skip
    assert res.returncode == 2 and res.stderr.count("\n") == 1
