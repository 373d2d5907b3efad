"""``pvdesc build`` end to end for describe acpi, and the bad inputs that must exit 2 cleanly."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import EXAMPLES, cli_subprocess


@pytest.mark.parametrize(
    ("example", "tables"),
    [("uefi-acpi-hole", ["ssdt"]), ("uefi-acpi-numa", ["ssdt", "srat"])],
)
def test_build_writes_all_files_and_manifest(
    tmp_path: Path, example: str, tables: list[str]
) -> None:
    out = tmp_path / "out"
    proc = cli_subprocess("build", f"examples/{example}.yaml", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    # generic-kvm examples also get the C header and Rust module (VMM profile outputs).
    suffixes = ("dts", "dtb", "dtso", "dtbo", "hypervisor.json", "manifest.json", "h", "rs")
    expected = {f"{example}.{s}" for s in suffixes}
    expected |= {f"{example}.{t}.{ext}" for t in tables for ext in ("dsl", "aml")}
    # and no temp files left behind; .pvdesc holds the generations the names link to
    assert {p.name for p in out.iterdir()} == expected | {".pvdesc"}
    manifest = json.loads((out / f"{example}.manifest.json").read_text())
    assert manifest["describe"] == "acpi"
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == expected - {f"{example}.manifest.json"}
    for name, entry in listed.items():
        data = (out / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    assert listed[f"{example}.ssdt.aml"]["kind"] == "ssdt-aml"
    assert (out / f"{example}.ssdt.aml").read_bytes()[:4] == b"SSDT"
    if "srat" in tables:
        assert (out / f"{example}.srat.aml").read_bytes()[:4] == b"SRAT"


def _one_line_exit_2(proc: subprocess.CompletedProcess[str], out: Path) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pvdesc: error: ")
    assert not out.exists(), "nothing may be written on error"
    assert proc.stdout == ""
    return lines[0]


def test_region_above_ipa_limit(tmp_path: Path) -> None:
    desc = tmp_path / "high.yaml"
    desc.write_text(
        "name: high\nvcpus: 2\nipa_bits: 40\nboot: uefi-acpi\n"
        "memory:\n  - {base: 0x40000000, size: 1G}\n"
        "stolen_time:\n  placement: fixed\n  base: 0x10000000000\n"
    )
    out = tmp_path / "out"
    line = _one_line_exit_2(cli_subprocess("build", str(desc), "-o", str(out)), out)
    assert f"{desc}:9:" in line  # the base: line
    assert "IPA" in line


def test_oem_id_longer_than_6(tmp_path: Path) -> None:
    text = (EXAMPLES / "uefi-acpi-hole.yaml").read_text()
    desc = tmp_path / "oem.yaml"
    desc.write_text(text.replace("oem_id: PVDESC", "oem_id: PVDESC7"))
    out = tmp_path / "out"
    line = _one_line_exit_2(cli_subprocess("build", str(desc), "-o", str(out)), out)
    lineno = next(i for i, t in enumerate(desc.read_text().splitlines(), 1) if "oem_id:" in t)
    assert f"{desc}:{lineno}:" in line
    assert "acpi.oem_id" in line and "1-6" in line


def test_iasl_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))
    out = tmp_path / "out"
    line = _one_line_exit_2(
        cli_subprocess("build", "examples/uefi-acpi-hole.yaml", "-o", str(out), env=env), out
    )
    assert "iasl" in line and "acpica-tools" in line


def test_non_acpi_build_does_not_need_iasl(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))
    out = tmp_path / "out"
    proc = cli_subprocess("build", "examples/uefi-carve-exclude.yaml", "-o", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert not list(out.glob("*.aml"))
