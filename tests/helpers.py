"""What the tests share: run the CLI and other programs, and check outputs with independent tools.

The CLI runs two ways, named so they cannot be confused: :func:`cli_in_process`
(``cli.main`` in this interpreter, output from ``capsys``) and :func:`cli_subprocess`
(``python -m pvdesc`` in a fresh interpreter).  Every other program starts through
:func:`run`.  The checkers (dtc, libfdt, dt-validate, QEMU's ``dumpdtb``) raise
``AssertionError`` with the tool's own words when an output is bad; these tools are
installed by ``scripts/setup --test``, and a missing one is a test failure, never a
skip.  The SRAT parser is an oracle of its own, written from the ACPI specification
with :mod:`struct`, not from pvdesc's code.  ``conftest.py`` holds only fixtures.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import libfdt
import pytest

from pvdesc.commands import cli
from pvdesc.commands.validate import reports
from pvdesc.commands.validate.results import FleetReport
from pvdesc.emit import build
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
#: The hang guard of one CLI run in a fresh interpreter (never a timing assertion).
CLI_TIMEOUT = 120
QEMU = "qemu-system-aarch64"
#: QEMU virt's own stolen-time slot (docs/vmm-layouts.md §1: hw/arm/virt.c VIRT_PVTIME).
QEMU_PVTIME = 0x090A0000
QEMU_PVTIME_SIZE = 0x10000

# --------------------------------------------------------------------------- running things


def program(name: str) -> str:
    """The path of an external program the tests use, found as pvdesc finds its own
    (:func:`pvdesc.tools.proc.find_program`: beside this Python, then ``PATH``).  A missing
    program fails the test with the way to install it; it is never skipped."""
    return proc.program(name, "scripts/setup --test installs it")


def run(
    args: list[str],
    *,
    timeout: float = 60,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (never a shell), capturing text output; the caller judges the result.

    A bare program name in ``args[0]`` is looked up with :func:`program`.
    """
    argv = [program(args[0]) if "/" not in args[0] else args[0], *args[1:]]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )


def cli_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the pvdesc CLI in this process: ``(exit status, stdout, stderr)``."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@overload
def cli_subprocess(
    *args: str,
    stdin: bytes = b"",
    cwd: Path | str = ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
    text: Literal[True] = True,
) -> subprocess.CompletedProcess[str]: ...


@overload
def cli_subprocess(
    *args: str,
    stdin: bytes = b"",
    cwd: Path | str = ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
    text: Literal[False],
) -> subprocess.CompletedProcess[bytes]: ...


def cli_subprocess(
    *args: str,
    stdin: bytes = b"",
    cwd: Path | str = ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
    text: bool = True,
) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
    """Run ``python -m pvdesc ARGS`` in a fresh interpreter and capture its output.

    ``stdin`` is all it reads (never the terminal); ``env`` replaces the environment
    when given; ``text=False`` keeps the output as bytes (a DTB is not text).
    """
    return subprocess.run(
        [sys.executable, "-m", "pvdesc", *args],
        input=stdin.decode() if text else stdin,
        capture_output=True,
        text=text,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )


# --------------------------------------------------------------------------- device trees


def dtc(text: str, tmp: Path, name: str = "t") -> Path:
    """Compile DTS text to ``tmp/name.dtb`` with dtc (fails the test if dtc fails)."""
    src = tmp / f"{name}.dts"
    out = tmp / f"{name}.dtb"
    src.write_text("/dts-v1/;\n" + text)
    res = run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(out), str(src)])
    assert res.returncode == 0, f"dtc on {src}: {res.stderr}"
    return out


def root(body: str, cells: str = "#address-cells = <2>; #size-cells = <2>;") -> str:
    """A root node with the given body (and QEMU-like 2/2 cells by default)."""
    return f'/ {{ compatible = "linux,dummy-virt"; model = "t"; {cells}\n{body}\n}};\n'


def memory(base: int, size: int) -> str:
    """A ``memory@`` node under 2/2 root cells."""
    return (
        f'memory@{base:x} {{ device_type = "memory"; '
        f"reg = <{base >> 32:#x} {base & 0xFFFFFFFF:#x} "
        f"{size >> 32:#x} {size & 0xFFFFFFFF:#x}>; }};"
    )


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


def qemu_dtb(tmp: Path, name: str, *args: str) -> Path:
    """``qemu-system-aarch64 -machine virt,...,dumpdtb=`` (TCG, no KVM needed)."""
    out = tmp / f"{name}.dtb"
    machine = "virt,gic-version=3" if "-smp" in args else "virt"
    cmd = [QEMU, "-machine", f"{machine},dumpdtb={out}", "-cpu", "max", "-nographic"]
    qemu_dump([*cmd, "-net", "none", "-display", "none", *args], out)
    return out


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


# --------------------------------------------------------------------------- libfdt and dt-validate


def libfdt_check(blob: bytes) -> libfdt.Fdt:
    """Parse with libfdt and run fdt_check_full."""
    fdt = libfdt.Fdt(blob)
    rc = libfdt.fdt_check_full(fdt._fdt, len(blob))
    assert rc == 0, f"fdt_check_full: {libfdt.fdt_strerror(rc)}"
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
    ac = libfdt.fdt_address_cells(fdt._fdt, parent)
    sc = libfdt.fdt_size_cells(fdt._fdt, parent)
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
        off, depth = fdt.next_node(off, depth, (libfdt.NOTFOUND,))
    return nodes


# --------------------------------------------------------------------------- ACPI tables

HEADER = struct.Struct("<4sIBB6s8sI4sI")  # ACPI table header, 36 bytes
SRAT_RESERVED = 12  # Table Revision (4) + Reserved (8)
MEMORY_AFFINITY = struct.Struct("<BBIHQQIIQ")  # type 1, length 40
GICC_AFFINITY = struct.Struct("<BBIIII")  # type 3, length 18


@dataclass(frozen=True)
class Header:
    """The fields of an ACPI table header (ACPI 6.5 §5.2.6) the tests compare.

    Attributes: ``signature`` (4 bytes), ``length`` (of the whole table), ``revision``,
    ``oem_id`` (6 bytes), ``oem_table_id`` (8 bytes), ``oem_revision``.
    """

    signature: bytes
    length: int
    revision: int
    oem_id: bytes
    oem_table_id: bytes
    oem_revision: int


@dataclass(frozen=True)
class MemAff:
    """An SRAT Memory Affinity structure (type 1).

    Attributes: ``node`` (proximity domain), ``base`` and ``size`` (bytes), ``flags``.
    """

    node: int
    base: int
    size: int
    flags: int


@dataclass(frozen=True)
class GiccAff:
    """An SRAT GICC Affinity structure (type 3).

    Attributes: ``node`` (proximity domain), ``uid`` (the processor's ACPI UID), ``flags``.
    """

    node: int
    uid: int
    flags: int


def checksum_valid(table: bytes) -> bool:
    """Whether the table's bytes sum to zero modulo 256, as its checksum makes them."""
    return sum(table) & 0xFF == 0


def checksum_broken(table: bytes) -> bytes:
    """The same table with its header checksum byte (offset 9) one bit off: same length, other
    bytes, a table every ACPI reader must refuse or warn about."""
    broken = bytearray(table)
    broken[9] ^= 0x01
    return bytes(broken)


def example_ssdt(path: Path) -> bytes:
    """The SSDT the description at ``path`` builds (nothing written)."""
    return next(o.data for o in build.plan(path).outputs if o.name.endswith(".ssdt.aml"))


def header(table: bytes) -> Header:
    """The header at the start of ``table``."""
    sig, length, rev, _csum, oem, oem_tab, oem_rev, _cid, _crev = HEADER.unpack_from(table)
    return Header(sig, length, rev, oem, oem_tab, oem_rev)


def parse_srat(table: bytes) -> tuple[Header, list[MemAff], list[GiccAff]]:
    """Walk the SRAT subtables; fail on any type/length this test does not expect."""
    hdr = header(table)
    if hdr.signature != b"SRAT" or hdr.length != len(table):
        raise ValueError(f"not a whole SRAT: {hdr}")
    off = HEADER.size + SRAT_RESERVED
    mem: list[MemAff] = []
    gicc: list[GiccAff] = []
    while off < len(table):
        kind, length = table[off], table[off + 1]
        if kind == 1 and length == MEMORY_AFFINITY.size:
            _, _, node, _, base, size, _, flags, _ = MEMORY_AFFINITY.unpack_from(table, off)
            mem.append(MemAff(node, base, size, flags))
        elif kind == 3 and length == GICC_AFFINITY.size:
            _, _, node, uid, flags, _ = GICC_AFFINITY.unpack_from(table, off)
            gicc.append(GiccAff(node, uid, flags))
        else:
            raise ValueError(f"unexpected subtable type {kind} length {length} at {off:#x}")
        off += length
    if off != len(table):
        raise ValueError("subtables overrun the table")
    return hdr, mem, gicc


def plan_example(name: str) -> build.BuildResult:
    """The build plan of ``examples/NAME.yaml`` (nothing written)."""
    return build.plan(EXAMPLES / f"{name}.yaml")


def outputs(result: build.BuildResult) -> dict[str, bytes]:
    """A plan's outputs by file name."""
    return {o.name: o.data for o in result.outputs}


def alter_outputs(
    monkeypatch: pytest.MonkeyPatch,
    victim: Callable[[str], bool],
    alter: Callable[[build.Output], build.Output],
) -> None:
    """``build.plan`` as before, but every output of a description ``victim`` picks goes through
    ``alter`` (a broken DTB, DTS or SSDT amid good ones)."""
    real_plan = build.plan

    def plan(path: str | Path, *args: object, **kw: object) -> build.BuildResult:
        result = real_plan(path)
        if not victim(str(path)):
            return result
        changed = tuple(alter(o) for o in result.outputs)
        return build.BuildResult(result.loaded, result.layout, changed)

    monkeypatch.setattr(build, "plan", plan)


def all_reports(report: FleetReport) -> tuple[str, str, str, bytes]:
    """A validate run's report in every format (text, GitHub, JSON, JUnit)."""
    return (
        reports.to_text(report),
        reports.to_github(report),
        reports.to_json(report),
        reports.to_junit(report),
    )


def sigterm_after_mkdtemp(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tempfile.mkdtemp`` sends this process SIGTERM once it has made the folder.

    The signal's handler runs before ``mkdtemp`` returns: the window between the folder
    being made and ``TemporaryDirectory`` setting up its removal.
    """
    real = tempfile.mkdtemp

    def mkdtemp(*args: str | None) -> str:
        made = real(*args)
        os.kill(os.getpid(), signal.SIGTERM)
        return made

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
