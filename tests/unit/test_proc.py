"""External tools are run safely: timeouts kill the whole process group, stderr reaches the error.

Fake ``iasl``, ``acpiexec`` and ``qemu-system-aarch64`` scripts are put first on
PATH: one that hangs (and starts a child that would outlive a plain kill), one
that writes to stderr and exits 255.  The real tools are exercised by the ACPI
and QEMU tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import EXAMPLES, cli_in_process, cli_subprocess

from pvdesc.description.load import load
from pvdesc.emit import acpi, build
from pvdesc.emit import devicetree as dt
from pvdesc.errors import AcpiError, DTError, ToolError
from pvdesc.layout import allocate as layout
from pvdesc.tools import acpica, proc, qemu

HANG = """#!/bin/sh
echo $$ > "{pids}/leader"
sleep 1000 &
echo $! > "{pids}/child"
echo "started, now waiting" >&2
wait
"""
FAIL = """#!/bin/sh
echo "some banner on stdout"
echo "{name}: fatal: cannot frobnicate the widget" >&2
exit 255
"""
#: Exits at once but leaves a child holding stdout open.
DAEMON = """#!/bin/sh
echo $$ > "{pids}/leader"
sleep 1000 &
echo $! > "{pids}/child"
exit 0
"""


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def _gone(pid: int) -> bool:
    # SIGKILL is delivered at once, but the exit runs asynchronously: wait for it
    # (a hang guard, not a timing assertion).
    for _ in range(200):
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def fakebin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = tmp_path / "bin"
    d.mkdir()
    (tmp_path / "pids").mkdir()
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")
    yield d
    for f in (tmp_path / "pids").glob("*"):  # never leave a stray sleep behind
        text = f.read_text()
        if not text:  # killed between the shell's `>` and its echo: it never ran on
            continue
        pid = int(text)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _fake(bin_dir: Path, name: str, template: str) -> Path:
    path = bin_dir / name
    path.write_text(template.format(pids=bin_dir.parent / "pids", name=name))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _pids(bin_dir: Path) -> list[int]:
    return [int((bin_dir.parent / "pids" / n).read_text()) for n in ("leader", "child")]


def _ssdt_source() -> str:
    """The SSDT text of an example, rendered without running iasl (a fake may be on PATH)."""
    lay = layout.allocate(load(EXAMPLES / "uefi-acpi-hole.yaml").description)
    return acpi.ssdt_source(lay)


def test_hanging_iasl_times_out_and_leaves_no_process(
    fakebin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(fakebin, "iasl", HANG)
    monkeypatch.setattr(acpica, "TIMEOUT", 1.0)
    with pytest.raises(ToolError) as info:
        acpica.compile_asl(_ssdt_source(), template="ssdt.asl.j2")
    text = str(info.value)
    assert text.startswith("iasl: timed out after 1 s and was killed")
    assert "started, now waiting" in text  # its stderr reaches the message
    for pid in _pids(fakebin):
        assert _gone(pid), f"process {pid} survived the timeout"


def test_failing_iasl_stderr_and_status_in_the_error(fakebin: Path) -> None:
    _fake(fakebin, "iasl", FAIL)
    with pytest.raises(ToolError) as info:
        acpica.compile_asl(_ssdt_source(), template="ssdt.asl.j2")
    assert str(info.value) == (
        "iasl: failed (exit 255) on ssdt.asl.j2: iasl: fatal: cannot frobnicate the widget"
    )


def test_failing_iasl_through_the_cli_is_one_line_exit_2(fakebin: Path, tmp_path: Path) -> None:
    _fake(fakebin, "iasl", FAIL)
    out = tmp_path / "out"
    res = cli_subprocess(
        "build", str(EXAMPLES / "uefi-acpi-hole.yaml"), "-o", str(out), env=dict(os.environ)
    )
    assert res.returncode == 2
    assert res.stderr == (
        "pvdesc: error: iasl: failed (exit 255) on ssdt.asl.j2: "
        "iasl: fatal: cannot frobnicate the widget\n"
    )
    assert not out.exists()


#: Fails like FAIL, but only once the rebuild's new generation is staged beside the old one.
#: An iasl that waits (10 s at most) until the new generation holds the last output the build
#: stages before it waits for iasl (the VMM files come after the hypervisor config), lists the
#: store, and fails.  Waiting only for the folder raced with the build still writing into it.
FAIL_WHEN_STAGED = """#!/bin/sh
i=0
while [ "$(ls {store}/g-*/*.rs 2>/dev/null | wc -l)" -lt 2 ] && [ $i -lt 1000 ]; do
    sleep 0.01
    i=$((i + 1))
done
ls {store}/g-* > "{seen}"
echo "iasl: fatal: cannot frobnicate the widget" >&2
exit 255
"""


def test_failing_iasl_on_a_rebuild_removes_what_was_staged(fakebin: Path, tmp_path: Path) -> None:
    """A rebuild writes its outputs while iasl runs; iasl failing then removes them all."""
    desc, out = str(EXAMPLES / "uefi-acpi-hole.yaml"), tmp_path / "out"
    assert cli_subprocess("build", "-q", desc, "-o", str(out)).returncode == 0  # the real iasl
    store = out / ".pvdesc" / "uefi-acpi-hole"

    def state() -> dict[str, bytes | str | int]:
        files: dict[str, bytes | str | int] = {p.name: p.read_bytes() for p in out.glob("uefi-*")}
        for p in store.iterdir():
            files[f"store/{p.name}"] = os.readlink(p) if p.is_symlink() else p.stat().st_mode
        files["entries"] = " ".join(sorted(p.name for p in out.iterdir()))
        return files

    before = state()
    seen = tmp_path / "seen"
    fake = fakebin / "iasl"
    fake.write_text(FAIL_WHEN_STAGED.format(store=store, seen=seen))
    fake.chmod(0o755)
    res = cli_subprocess("build", desc, "-o", str(out), env=dict(os.environ))
    assert (res.returncode, res.stderr) == (
        2,
        "pvdesc: error: iasl: failed (exit 255) on ssdt.asl.j2: "
        "iasl: fatal: cannot frobnicate the widget\n",
    )
    staged = seen.read_text()
    # iasl saw the new generation beside the old one, holding what needs no iasl.
    assert staged.count("/g-") == 2, staged
    assert staged.count("uefi-acpi-hole.hypervisor.json") == 2, staged
    assert staged.count("uefi-acpi-hole.ssdt.dsl") == 2, staged
    assert state() == before  # and it is gone: the old outputs, the old store, nothing more


def test_iasl_disassembler_and_acpiexec_failures_carry_stderr(fakebin: Path) -> None:
    _fake(fakebin, "iasl", FAIL)
    _fake(fakebin, "acpiexec", FAIL)
    with pytest.raises(AcpiError, match="iasl -d failed \\(exit 255\\): iasl: fatal: cannot"):
        acpica.disassemble(b"SSDT")
    with pytest.raises(AcpiError, match="acpiexec exited 255: acpiexec: fatal: cannot"):
        acpica.acpiexec([b"SSDT"], ["quit"])


def test_hanging_acpiexec_times_out(fakebin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(fakebin, "acpiexec", HANG)
    monkeypatch.setattr(acpica, "TIMEOUT", 1.0)
    with pytest.raises(ToolError, match=r"^acpiexec: timed out after 1 s"):
        acpica.acpiexec([b"SSDT"], ["quit"])
    assert all(_gone(pid) for pid in _pids(fakebin))


def test_qemu_dumpdtb_hang_and_failure(fakebin: Path) -> None:
    machine = qemu.Machine(memory=1 << 30)
    _fake(fakebin, "qemu-system-aarch64", HANG)
    with pytest.raises(ToolError, match=r"^qemu-system-aarch64: timed out after 1 s"):
        qemu.dump_dtb(machine, timeout=1.0)
    assert all(_gone(pid) for pid in _pids(fakebin))
    _fake(fakebin, "qemu-system-aarch64", FAIL)
    with pytest.raises(ToolError) as info:
        qemu.dump_dtb(machine)
    assert str(info.value) == (
        "qemu-system-aarch64: dumpdtb failed (exit 255): "
        "qemu-system-aarch64: fatal: cannot frobnicate the widget"
    )


def test_child_holding_the_pipe_is_killed_at_the_timeout(fakebin: Path) -> None:
    """The tool exits at once, but a child it left keeps stdout open: the group is killed."""
    tool = _fake(fakebin, "daemon", DAEMON)
    res = proc.run([str(tool)], timeout=1.0)
    assert res.timed_out
    assert all(_gone(pid) for pid in _pids(fakebin))


class _Interrupted(Exception):
    pass


@contextlib.contextmanager
def _interrupted_after(seconds: float) -> Iterator[None]:
    """The block is interrupted (by an exception from a signal handler) after ``seconds``."""

    def interrupt(_sig: int, _frame: object) -> None:
        raise _Interrupted

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        with pytest.raises(_Interrupted):
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_interrupt_kills_the_group(fakebin: Path) -> None:
    tool = _fake(fakebin, "hang", HANG)
    with _interrupted_after(1.0):
        proc.run([str(tool)], timeout=600)
    assert all(_gone(pid) for pid in _pids(fakebin))


def test_missing_and_unrunnable_tools(fakebin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fakebin))
    missing = r"^iasl: not found next to this Python or on PATH; install the Debian package"
    with pytest.raises(ToolError, match=missing):
        acpica.tool("iasl")
    not_exec = fakebin / "plain"
    not_exec.write_text("x")
    with pytest.raises(ToolError, match=r"^plain: cannot run: Permission denied$"):
        proc.run([str(not_exec)], timeout=5)


def test_arguments_are_never_parsed_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    res = proc.run(["/bin/echo", f"; touch {marker}", "$(id)"], timeout=10)
    assert res.stdout == f"; touch {marker} $(id)\n"
    assert not marker.exists()
    assert res.returncode == 0 and not res.timed_out


# --------------------------------------------------------------- proc.start (a tool run alongside)


def test_started_tool_gives_what_run_gives() -> None:
    argv = ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]
    with proc.start(argv, timeout=10) as job:
        started = job.wait()
    assert started == proc.run(argv, timeout=10)
    assert (started.stdout, started.stderr, started.returncode) == ("out\n", "err\n", 3)


def test_started_tool_never_blocks_on_output_nobody_reads() -> None:
    """4 MiB of output, far over a pipe's 64 KiB: it still finishes before anyone waits."""
    with proc.start(["head", "-c", str(4 << 20), "/dev/zero"], timeout=60) as job:
        for _ in range(400):  # a hang guard, not a timing assertion
            if job._proc.poll() is not None:
                break
            time.sleep(0.05)
        assert job._proc.poll() == 0, "the tool blocked writing its output"
        assert len(job.wait().stdout) == 4 << 20


def test_leaving_the_block_unwaited_kills_the_group(fakebin: Path) -> None:
    tool = _fake(fakebin, "hang", HANG)
    with proc.start([str(tool)], timeout=600):
        for _ in range(200):  # until the tool has started its child
            if (fakebin.parent / "pids" / "child").exists():
                break
            time.sleep(0.05)
    assert all(_gone(pid) for pid in _pids(fakebin))


def test_started_tool_timeout_counts_from_the_start(fakebin: Path) -> None:
    tool = _fake(fakebin, "hang", HANG)
    with proc.start([str(tool)], timeout=1.0) as job:
        time.sleep(1.5)  # the caller works past the deadline
        res = job.wait()
    assert res.timed_out and res.returncode == -signal.SIGKILL
    assert "started, now waiting" in res.stderr
    assert all(_gone(pid) for pid in _pids(fakebin))


def test_interrupted_wait_kills_the_group(fakebin: Path) -> None:
    tool = _fake(fakebin, "hang", HANG)
    with _interrupted_after(1.0), proc.start([str(tool)], timeout=600) as job:
        job.wait()
    assert all(_gone(pid) for pid in _pids(fakebin))


#: HANG, with one pair of pid files per instance (a build starts two iasl at once).
HANG_EACH = """#!/bin/sh
sleep 1000 &
echo $! > "{pids}/child.$$"
echo $$ > "{pids}/leader.$$"
wait
"""


def test_a_build_that_fails_while_iasl_runs_leaves_nothing(
    fakebin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """iasl is started before the DT is rendered; a DT error stops it and removes its files."""
    _fake(fakebin, "iasl", HANG_EACH)
    pids = fakebin.parent / "pids"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def broken(*_args: object, **_kw: object) -> object:
        for _ in range(200):  # until both iasl (SRAT, SSDT) have started their child
            if len(list(pids.glob("leader.*"))) == 2:
                break
            time.sleep(0.05)
        raise DTError("injected failure")

    monkeypatch.setattr(dt, "render", broken)
    out = tmp_path / "out"
    with pytest.raises(DTError, match="injected failure"):
        build.build(EXAMPLES / "uefi-acpi-numa.yaml", out)
    started = [int(f.read_text()) for f in pids.glob("*.*")]
    assert len(started) == 4  # two iasl, each with a child
    assert all(_gone(pid) for pid in started)
    assert list(scratch.iterdir()) == []
    assert not out.exists()


def test_unwaited_compilation_removes_its_directory(fakebin: Path) -> None:
    _fake(fakebin, "iasl", HANG)
    with acpica.Compilation(_ssdt_source(), template="ssdt.asl.j2", name="ssdt") as job:
        work = job._work
        assert (work / "ssdt.asl").is_file()
    assert not work.exists()


def test_what_a_started_tool_leaves_running_is_killed_when_it_exits(fakebin: Path) -> None:
    tool = _fake(fakebin, "daemon", DAEMON)
    with proc.start([str(tool)], timeout=60) as job:
        res = job.wait()
    assert res.returncode == 0 and not res.timed_out
    assert all(_gone(pid) for pid in _pids(fakebin))


def test_started_tool_without_pidfd(fakebin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where os.pidfd_open is missing or refused, waiting falls back to polling."""

    def refuse(_pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refuse)
    argv = ["/bin/sh", "-c", "echo out; exit 3"]
    with proc.start(argv, timeout=10) as job:
        assert (job.wait().stdout, job.wait().returncode) == ("out\n", 3)
    tool = _fake(fakebin, "hang", HANG)
    with proc.start([str(tool)], timeout=1.0) as job:
        assert job.wait().timed_out
    assert all(_gone(pid) for pid in _pids(fakebin))
    # ... and the tool is still unreaped when it is found to have exited, so what it
    # left running in its group is killed.
    tool = _fake(fakebin, "daemon", DAEMON)
    with proc.start([str(tool)], timeout=60) as job:
        assert not job.wait().timed_out
    assert all(_gone(pid) for pid in _pids(fakebin))


def test_no_temporary_directory_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    monkeypatch.setattr(tempfile, "tempdir", str(missing))
    out = tmp_path / "out"
    code, _, err = cli_in_process(
        ["build", str(EXAMPLES / "uefi-acpi-numa.yaml"), "-o", str(out)], capsys
    )
    assert code == 2
    assert err.startswith(
        "pvdesc: error: iasl: cannot create a temporary directory for its files: "
        f"No such file or directory: {missing}/pvdesc-iasl-"
    )
    assert err.endswith(" (set TMPDIR to a writable directory)\n") and err.count("\n") == 1
    assert not out.exists()


def test_no_temporary_file_for_a_tools_output_is_a_tool_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(*_args: object, **_kw: object) -> object:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    with pytest.raises(ToolError) as info:
        proc.start(["/bin/true"], timeout=10)
    assert str(info.value) == (
        "true: cannot create a temporary file for its output: No space left on device "
        "(set TMPDIR to a writable directory)"
    )


def test_leaving_the_block_after_the_tool_exited_kills_what_it_left(fakebin: Path) -> None:
    """Never waited for, the tool has exited but its child lives on: the block kills it."""
    tool = _fake(fakebin, "daemon", DAEMON)
    with proc.start([str(tool)], timeout=60):
        for _ in range(200):  # until the tool has written both pids
            if _pids_ready(fakebin):
                break
            time.sleep(0.05)
        leader, child = _pids(fakebin)
        assert _gone(leader)  # exited: a zombie until reaped
        assert _alive(child)
    assert _gone(child)


def _pids_ready(bin_dir: Path) -> bool:
    try:
        _pids(bin_dir)
    except (FileNotFoundError, ValueError):
        return False
    return True


CAT = """#!/bin/sh
cat
"""


def test_stdin_is_dev_null_or_the_file_given(fakebin: Path, tmp_path: Path) -> None:
    tool = _fake(fakebin, "cat-stdin", CAT)
    assert proc.run([str(tool)], timeout=30).stdout == ""  # /dev/null: end of file at once
    commands = tmp_path / "commands.txt"
    commands.write_text("evaluate \\_SB.PVTM._STA\nquit\n")
    res = proc.run([str(tool)], timeout=30, stdin=commands)
    assert (res.returncode, res.stdout) == (0, "evaluate \\_SB.PVTM._STA\nquit\n")
    with pytest.raises(ToolError, match=r"^cat-stdin: cannot run: No such file or directory$"):
        proc.run([str(tool)], timeout=30, stdin=tmp_path / "missing.txt")


def test_acpiexec_gets_its_commands_on_stdin_ending_with_quit(fakebin: Path) -> None:
    _fake(fakebin, "acpiexec", CAT)
    assert acpica.acpiexec([b"SSDT"], ["evaluate \\_SB.X", "resources \\_SB.X"]) == (
        "evaluate \\_SB.X\nresources \\_SB.X\nquit\n"
    )
    with pytest.raises(AcpiError, match="one line"):
        acpica.acpiexec([b"SSDT"], ["evaluate \\_SB.X\nquit"])
