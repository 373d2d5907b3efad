"""Helpers every test may import: run tools and the CLI, and the external checkers.

The checkers (dtc, libfdt, dt-validate) raise ``AssertionError`` with the tool's
own words when an output is bad.  These tools are installed by ``scripts/setup
--test``; a missing one is a test failure, never a skip.  ``conftest.py`` holds
only fixtures.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import libfdt
import pytest

from pvdesc.commands import cli
from pvdesc.tools import proc
from pvdesc.tools.validators import DTC_CHECKS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: The installed ``pvdesc`` console script of the interpreter running the tests (the venv's).
SCRIPT = Path(sys.executable).parent / "pvdesc"
#: dt-validate and dt-mk-schema come with the test extras, beside the venv's Python.
DTSCHEMA_HINT = "pip install -e '.[test]' (scripts/setup --test)"
#: Timeout for what may take minutes on a slow machine: QEMU, compilers, whole builds.
SLOW = 300


def program(name: str) -> str:
    """The path of an external program the tests use, found as pvdesc finds its own
    (:func:`pvdesc.tools.proc.find_program`: beside this Python, then ``PATH``).  A missing
    program fails the test with the way to install it; it is never skipped."""
    return proc.program(name, "scripts/setup --test installs it")


def run(args: list[str], *, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command (never a shell), capturing text output; the caller judges the result.

    A bare program name in ``args[0]`` is looked up with :func:`program`.
    """
    argv = [program(args[0]) if "/" not in args[0] else args[0], *args[1:]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def pvdesc(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the pvdesc CLI in a fresh interpreter."""
    return run(
        [sys.executable, "-m", "pvdesc", *args],
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the pvdesc CLI in this process: ``(exit status, stdout, stderr)``."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _dtc_strict(dtb: Path) -> subprocess.CompletedProcess[str]:
    flags = [f for c in DTC_CHECKS for f in ("-E", c)]
    res = run(["dtc", "-I", "dtb", "-O", "dts", *flags, str(dtb)])
    assert res.returncode == 0, f"dtc on {dtb}: {res.stderr}"
    return res


def dtc_check(dtb: Path, *, baseline: Path | None = None) -> str:
    """Decompile with pvdesc's dtc checks (``DTC_CHECKS``) as errors. Returns the DTS.

    dtc must succeed and warn about nothing, or, given ``baseline`` (the VMM's own
    blob that ``dtb`` was patched from), about nothing it does not warn about there.
    """
    res = _dtc_strict(dtb)
    known = "" if baseline is None else _dtc_strict(baseline).stderr
    assert res.stderr == known.replace(str(baseline), str(dtb)), f"dtc on {dtb}: {res.stderr}"
    return res.stdout


def decompile(dtb: Path) -> str:
    """``dtc -s``: the tree as sorted DTS, for comparing two blobs."""
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
    """Run QEMU with ``dumpdtb=``; it must exit 0 and leave the blob."""
    res = run(argv, timeout=SLOW)
    assert res.returncode == 0, res.stderr
    assert dumpdtb.is_file()


def libfdt_check(blob: bytes) -> libfdt.Fdt:
    """Parse with libfdt and run fdt_check_full."""
    fdt = libfdt.Fdt(blob)
    rc = libfdt.fdt_check_full(fdt._fdt, len(blob))  # type: ignore[attr-defined]
    assert rc == 0, f"fdt_check_full: {libfdt.fdt_strerror(rc)}"  # type: ignore[attr-defined]
    return fdt


class DtValidate:
    """dt-validate with the dtschema core schemas plus pvdesc/tools/dtschema (compiled once)."""

    def __init__(self, workdir: Path) -> None:
        self.schema = workdir / "processed-schema.json"
        res = run(
            [
                proc.program("dt-mk-schema", DTSCHEMA_HINT),
                "-j",
                "-o",
                str(self.schema),
                str(ROOT / "pvdesc" / "tools" / "dtschema"),
            ],
            timeout=300,
        )
        assert res.returncode == 0 and self.schema.stat().st_size > 10_000, res.stderr

    def errors(self, dtb: Path) -> list[dict[str, object]]:
        """The diagnostics dt-validate reports (it exits 0 even on errors: read its JSON)."""
        out = dtb.with_suffix(".dtvalidate.json")
        out.unlink(missing_ok=True)
        res = run(
            [
                proc.program("dt-validate", DTSCHEMA_HINT),
                "-s",
                str(self.schema),
                "--json-output",
                str(out),
                str(dtb),
            ],
            timeout=120,
        )
        assert res.returncode == 0, f"dt-validate failed to run: {res.stderr}"
        assert out.exists(), f"dt-validate wrote no JSON for {dtb}: {res.stdout}{res.stderr}"
        result: list[dict[str, object]] = json.loads(out.read_text() or "[]")
        return result


def decode_reg(fdt: libfdt.Fdt, offset: int) -> list[tuple[int, int]]:
    """A node's reg as (base, size) pairs, using the parent's cells (default 2/1)."""
    parent = fdt.parent_offset(offset)
    ac = libfdt.fdt_address_cells(fdt._fdt, parent)  # type: ignore[attr-defined]
    sc = libfdt.fdt_size_cells(fdt._fdt, parent)  # type: ignore[attr-defined]
    words = fdt.getprop(offset, "reg").as_uint32_list()
    step = ac + sc
    assert len(words) % step == 0, "reg length is not a multiple of the parent's cells"
    out = []
    for i in range(0, len(words), step):
        base = 0
        for w in words[i : i + ac]:
            base = (base << 32) | w
        size = 0
        for w in words[i + ac : i + step]:
            size = (size << 32) | w
        out.append((base, size))
    return out


def walk(fdt: libfdt.Fdt) -> list[tuple[str, int]]:
    """Every node's (path, offset)."""
    nodes = []
    off, depth = 0, 0
    while off >= 0 and depth >= 0:
        nodes.append((fdt.get_path(off), off))
        off, depth = fdt.next_node(off, depth, (libfdt.NOTFOUND,))  # type: ignore[misc]
    return nodes
