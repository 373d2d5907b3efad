"""Every shipped example's outputs pass ``pvdesc check`` (DTB + hypervisor config + ACPI tables)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ROOT, cli_subprocess

from pvdesc.emit import build

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_outputs_pass_check(example: Path, tmp_path: Path) -> None:
    res = cli_subprocess("build", "-q", str(example), "-o", str(tmp_path))
    assert res.returncode == 0, res.stderr
    desc = build.plan(example).layout.description
    tables = [str(p) for p in sorted(tmp_path.glob(f"{desc.name}.*.aml"))]
    args = [
        "check",
        "--dtb",
        str(tmp_path / f"{desc.name}.dtb"),
        "--hypervisor-config",
        str(tmp_path / f"{desc.name}.hypervisor.json"),
        "--boot",
        str(desc.boot),
        "--format",
        "json",
    ]
    if tables:
        args += ["--acpi", *tables]
    res = cli_subprocess(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["format"] == "pvdesc.check/1" and report["verdict"] == "safe"
    assert not [f for f in report["findings"] if f["severity"] != "info"], report["findings"]
    if tables:
        assert any(f["code"] == "ssdt-claim-matches" for f in report["findings"])
