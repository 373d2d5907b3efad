"""The built wheel carries everything pvdesc reads at run time (schema, templates, dt schema).

The wheel is built the way users build it (pip, build isolation) and run from its unpacked
files, outside the repository, so nothing can come from the source tree.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, cli_subprocess, run

#: Debian's copy of the Apache License 2.0 (base-files), the standard text.
APACHE_2_0 = Path("/usr/share/common-licenses/Apache-2.0")

#: A VMM build script using the API; ``wrong`` is a type error mypy must see.
API_USER = """\
from pvdesc import api

result: api.Build = api.build_text("name: x\\nvcpus: 1\\nmemory: [{base: 0x40000000, size: 1G}]\\n")
ipas: tuple[int, ...] = result.hypervisor_config.pvtime_ipas
dtb: bytes = result.output("dtb")
safe: bool = api.check(dtb, result.hypervisor_config).safe
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a clean copy of what it is made of.

    Built in the repository, setuptools would reuse its ``build/`` folder, where a file
    since deleted (``py.typed``) still lies.
    """
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    # templates/ and vmm/ are packaged as pvdesc.templates and pvdesc.vmm (pyproject's package-dir)
    for name in ("pvdesc", "templates", "vmm"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=skip)
    out = tmp_path_factory.mktemp("wheel")
    res = run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    (built,) = out.glob("pvdesc-*.whl")
    return built


def test_wheel_runs_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "pvdesc/description/schema/description.schema.json",
        "pvdesc/templates/ssdt.asl.j2",
        "pvdesc/templates/map.svg.j2",
        "pvdesc/tools/dtschema/reserved-memory-parent.yaml",
        "pvdesc/templates/dtso-note.j2",
        "pvdesc/py.typed",
        "pvdesc/__main__.py",
        "pvdesc/api.py",
        "pvdesc/vmm/pvdesc-vmm.c",
        *(f"pvdesc/templates/{t.name}" for t in (ROOT / "templates").glob("*.j2")),
        *(
            f"pvdesc/emit/templates_compiled/{m.name}"
            for m in (ROOT / "pvdesc" / "emit" / "templates_compiled").glob("*.py")
        ),
    ):
        assert needed in names
    assert not [n for n in names if n.startswith(("templates/", "vmm/"))], "top-level data leaked"
    # the license file, in the dist-info, is the standard Apache-2.0 text pyproject names
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read("pvdesc-0.1.0.dist-info/METADATA").decode()
        license_text = zf.read("pvdesc-0.1.0.dist-info/licenses/LICENSE")
    assert "License-Expression: Apache-2.0" in metadata
    assert license_text == (ROOT / "LICENSE").read_bytes() == APACHE_2_0.read_bytes()
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    probe = run([sys.executable, "-c", "import pvdesc; print(pvdesc.__file__)"], cwd=work, env=env)
    assert probe.stdout.strip() == str(unpacked / "pvdesc" / "__init__.py")
    version = cli_subprocess("--version", cwd=work, env=env)
    assert version.returncode == 0 and version.stdout == "pvdesc 0.1.0\n", version.stderr
    example = ROOT / "examples" / "uefi-acpi-numa.yaml"
    res = cli_subprocess("build", "-q", str(example), "-o", "out", cwd=work, env=env)
    assert res.returncode == 0, res.stderr
    assert (work / "out" / "uefi-acpi-numa.srat.aml").is_file()
    res = cli_subprocess("validate", "--external", str(example), cwd=work, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_wheel_is_typed_for_mypy(wheel: Path, tmp_path: Path) -> None:
    """PEP 561: with the wheel installed, mypy --strict reads pvdesc.api's types (py.typed)."""
    venv = tmp_path / "venv"
    res = run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert res.returncode == 0, res.stderr
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    zipfile.ZipFile(wheel).extractall(purelib.stdout.strip())
    user = tmp_path / "user.py"
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable"]
    user.write_text(API_USER)
    res = run([*mypy, str(python), str(user)], cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout
    user.write_text(API_USER + 'wrong: str = result.output("dtb")\n')
    res = run([*mypy, str(python), str(user)], cwd=tmp_path, timeout=300)
    assert res.returncode == 1 and 'has type "bytes", variable has type "str"' in res.stdout
