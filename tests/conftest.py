"""Shared helpers: run the CLI in-process, run real tools (qemu, dtc, gcc, rustc)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pvdesc import cli

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tools import DtValidate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DTC_CHECKS = [
    "-E", "reg_format", "-E", "unique_unit_address", "-E", "unit_address_vs_reg",
    "-E", "avoid_default_addr_size",
]  # fmt: skip


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def dtc_check(dtb: Path) -> str:
    """dtc's stderr for the strict checks (decompiling to /dev/null); dtc must succeed."""
    res = run(["dtc", "-I", "dtb", "-O", "dts", "-o", "/dev/null", *DTC_CHECKS, str(dtb)])
    assert res.returncode == 0, res.stderr
    return res.stderr


def decompile(dtb: Path) -> str:
    res = run(["dtc", "-I", "dtb", "-O", "dts", "-s", str(dtb)])
    assert res.returncode == 0, res.stderr
    return res.stdout


def qemu_tcg_argv(args_file: Path, dumpdtb: Path) -> list[str]:
    """The generated QEMU command line made runnable under TCG, dumping its DTB.

    Only the KVM-only parts change: ``-accel kvm`` -> tcg, ``-cpu host,kvm-steal-time=on``
    -> ``-cpu max``; ``dumpdtb=`` is appended to ``-machine``.  ``-nic none``/``-display
    none``: this machine has no NIC option ROMs or display.
    """
    lines = [ln for ln in args_file.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 1
    argv = shlex.split(lines[0])
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "-accel":
            assert next(it) == "kvm"
            out += ["-accel", "tcg"]
        elif a == "-cpu":
            assert next(it) == "host,kvm-steal-time=on"
            out += ["-cpu", "max"]
        elif a == "-machine":
            out += ["-machine", next(it) + f",dumpdtb={dumpdtb}"]
        else:
            out.append(a)
    return [*out, "-nic", "none", "-display", "none"]


def qemu_dump(argv: list[str], dumpdtb: Path) -> None:
    res = run(argv)
    assert res.returncode == 0, res.stderr
    assert dumpdtb.is_file()


@pytest.fixture(scope="session")
def dt_validate(tmp_path_factory: pytest.TempPathFactory) -> DtValidate:
    return DtValidate(tmp_path_factory.mktemp("dtschema"))
