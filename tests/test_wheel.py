"""The built wheel carries everything pvdesc reads at run time (schema, templates, dt schema).

The wheel is built the way users build it (pip, build isolation) and run from its unpacked
files, outside the repository, so nothing can come from the source tree.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

from tools import ROOT, run


def test_wheel_runs_outside_the_repository(tmp_path: Path) -> None:
    res = run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("pvdesc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "pvdesc/schema/description.schema.json",
        "pvdesc/templates/ssdt.asl.j2",
        "pvdesc/templates/map.svg.j2",
        "pvdesc/dtschema/reserved-memory-parent.yaml",
        "pvdesc/vmm/pvdesc-vmm.c",
    ):
        assert needed in names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    probe = run([sys.executable, "-c", "import pvdesc; print(pvdesc.__file__)"], cwd=work, env=env)
    assert probe.stdout.strip() == str(unpacked / "pvdesc" / "__init__.py")
    example = ROOT / "examples" / "uefi-acpi-numa.yaml"
    res = run(
        [sys.executable, "-m", "pvdesc.cli", "build", "-q", str(example), "-o", "out"],
        cwd=work,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert (work / "out" / "uefi-acpi-numa.srat.aml").is_file()
    res = run(
        [sys.executable, "-m", "pvdesc.cli", "validate", "--external", str(example)],
        cwd=work,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
