"""Run an external tool (iasl, acpiexec, qemu-system-aarch64) the one safe way.

Every tool pvdesc starts goes through :func:`run`:

- an argument list, never a shell, so no file name is ever parsed as syntax;
- stdin is ``/dev/null``, or a file the caller wrote (acpiexec's commands): a
  tool waiting for more input gets end-of-file, it cannot hang pvdesc;
- the tool runs in a new session (its own process group), and when the timeout
  expires, or pvdesc itself is interrupted (SIGINT, or SIGTERM/SIGHUP under
  :func:`pvdesc.tools.signals.stopping`), the *whole group* gets SIGKILL, so
  nothing the tool started (a shell wrapper's children, QEMU's helpers) is left
  running.  The group is killed while its leader is still unreaped, so its id
  cannot have been reused;
- stdout and stderr are captured, and :func:`summary` puts the tool's own last
  words into the one-line error the caller raises.

Only the caller knows what a non-zero exit status means (iasl exits 255 on any
error; acpiexec exits 0 even on failures), so :func:`run` reports it and never
raises for it.

:func:`start` is :func:`run` in two halves, so a caller can work while the tool
runs (a build renders its DT while iasl compiles): it returns a :class:`Running`
whose :meth:`~Running.wait` gives the same :class:`Result`.  The tool's output
goes to unlinked temporary files, not pipes, so a tool nobody reads from yet can
never block on a full pipe; the timeout counts from the start; and leaving the
``with`` block of an unwaited :class:`Running` kills its group.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, NamedTuple

from pvdesc.errors import ToolError, one_line
from pvdesc.tools import signals

#: Seconds to wait for a killed group's pipes to close before giving up on its output.
KILL_GRACE = 5.0


def find_program(name: str) -> str | None:
    """Where the program ``name`` is: beside the running Python first, then ``PATH``.

    A virtualenv's own tools (``dt-validate``, ``dt-mk-schema``) live next to its
    interpreter and are on ``PATH`` only when the venv is activated; running
    ``.venv/bin/python -m pytest`` or ``.venv/bin/pvdesc`` must find them all the
    same.  This is the one place pvdesc and its tests look a program up.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def program(name: str, install: str) -> str:
    """:func:`find_program`, or a :class:`ToolError` saying how to install it."""
    path = find_program(name)
    if path is None:
        raise ToolError(f"not found next to this Python or on PATH; {install}", name)
    return path


class Result(NamedTuple):
    """A finished, or killed, tool run.

    Attributes:
        argv: the command as run.
        returncode: the exit status (negative signal number when killed).
        stdout: standard output (with stderr merged into it when asked for).
        stderr: standard error ("" when merged).
        timed_out: True when the timeout expired and the group was killed.
    """

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def name(self) -> str:
        """The tool's file name, as errors name it."""
        return Path(self.argv[0]).name


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")


def _popen(
    args: tuple[str, ...],
    cwd: Path | None,
    stdout: int | IO[bytes],
    stderr: int | IO[bytes],
    stdin: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new session (its own process group), stdin ``/dev/null`` or a file.

    A SIGTERM/SIGHUP arriving while the tool is being started is held back until
    the process exists, then its group is killed before the signal unwinds
    (:mod:`pvdesc.tools.signals`): a tool can never outlive pvdesc by starting late.
    """
    try:
        with signals.deferred(), contextlib.ExitStack() as stack:
            source: int | IO[bytes] = (
                subprocess.DEVNULL if stdin is None else stack.enter_context(stdin.open("rb"))
            )
            proc = subprocess.Popen(
                list(args),
                cwd=cwd,
                stdin=source,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
    except OSError as exc:
        signals.raise_pending()
        raise ToolError(f"cannot run: {exc.strerror}", Path(args[0]).name) from None
    try:
        signals.raise_pending()
    except BaseException:
        _kill_and_reap(proc)
        raise
    return proc


def _kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of ``proc``'s group, if ``proc`` is unreaped, then reap it.

    While ``proc`` is unreaped (running, or exited but not waited for) its pid, the
    group's id, cannot have been reused, so the kill reaches only its group.
    """
    if proc.returncode is None:
        _kill_group(proc)
        proc.wait()


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    merge_stderr: bool = False,
    stdin: Path | None = None,
) -> Result:
    """Run ``argv`` in its own process group; SIGKILL the group on timeout or interruption.

    ``stdin``: a file the tool reads as its standard input (default ``/dev/null``).
    Raises :class:`ToolError` only when the tool cannot be started at all.
    """
    args = tuple(argv)
    proc = _popen(
        args, cwd, subprocess.PIPE, subprocess.STDOUT if merge_stderr else subprocess.PIPE, stdin
    )
    timed_out = False
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            try:
                out, err = proc.communicate(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:  # something outside the group holds the pipes
                out, err = b"", b""
    finally:
        if proc.poll() is None:  # interrupted (KeyboardInterrupt, ...): leave nothing behind
            _kill_group(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait()
    return Result(args, proc.returncode, _text(out), _text(err), timed_out)


class Running:
    """A tool started by :func:`start`; :meth:`wait` for its :class:`Result`.

    Use it as a context manager: leaving the block kills the group of a tool
    that was not waited for (the caller failed in between) and frees its files.
    When the tool itself exits, anything it left running in its group is killed.

    Attributes:
        argv: the command as run.
        waited: seconds the caller spent blocked in :meth:`wait` (not the
            tool's run time: it may have finished while the caller worked).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: Path | None = None,
        stdin: Path | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.waited = 0.0
        self._result: Result | None = None
        try:  # closed by wait() or close() (the with block), not here
            self._out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
            self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        except OSError as exc:
            raise ToolError(
                f"cannot create a temporary file for its output: {exc.strerror or exc} "
                "(set TMPDIR to a writable directory)",
                Path(self.argv[0]).name,
            ) from None
        try:
            self._proc = _popen(self.argv, cwd, self._out, self._err, stdin)
        except ToolError:
            self._close_files()
            raise
        self._deadline = time.monotonic() + timeout

    def wait(self) -> Result:
        """Block until the tool ends (or the timeout, counted from the start, kills its group)."""
        if self._result is not None:
            return self._result
        begin = time.perf_counter()
        exited = False
        try:
            exited = _exits_within(self._proc, self._deadline - time.monotonic())
        finally:  # ended, timed out or interrupted: nothing of the group outlives this
            _kill_and_reap(self._proc)
            self.waited += time.perf_counter() - begin
        timed_out = not exited
        self._out.seek(0)
        self._err.seek(0)
        out, err = self._out.read(), self._err.read()
        self._close_files()
        self._result = Result(self.argv, self._proc.returncode, _text(out), _text(err), timed_out)
        return self._result

    def close(self) -> None:
        """Kill the group of a tool not waited for, running or not, and reap it; free its files."""
        _kill_and_reap(self._proc)
        self._close_files()

    def _close_files(self) -> None:
        self._out.close()
        self._err.close()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _exits_within(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Block until ``proc`` exits, leaving it unreaped, or ``timeout`` passes; True if it exited.

    A pidfd (Linux 5.3) wakes us the moment it exits.  Without one, ``waitid`` with
    ``WNOWAIT`` is polled with sleeps growing to 50 ms, as ``Popen.wait(timeout)``
    polls (that cost 6 ms a run on average, bench/run, and it reaps: the group could
    then no longer be killed safely).
    """
    if proc.returncode is not None:  # already reaped (by Popen.poll)
        return True
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return _polled_exit(proc, timeout)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(math.ceil(max(0.0, timeout) * 1000)))
    finally:
        os.close(fd)


def _polled_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """:func:`_exits_within` without a pidfd."""
    if not hasattr(os, "waitid"):  # macOS: waiting reaps, so stragglers cannot be killed
        try:
            proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + max(0.0, timeout)
    delay = 0.0005
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)
    return True


def start(
    argv: Sequence[str], *, timeout: float, cwd: Path | None = None, stdin: Path | None = None
) -> Running:
    """Start ``argv`` as :func:`run` would, and return at once (see :class:`Running`).

    Raises :class:`ToolError` only when the tool cannot be started at all.
    """
    return Running(argv, timeout=timeout, cwd=cwd, stdin=stdin)


def summary(result: Result, lines: int = 2, limit: int = 300) -> str:
    """The tool's last non-empty output lines (stderr first), as one short line."""
    text = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
    text = text or [ln.strip() for ln in result.stdout.splitlines() if ln.strip()]
    if not text:
        return "no output"
    return one_line(" | ".join(text[-lines:]), limit)


def run_checked(
    argv: Sequence[str], *, timeout: float, cwd: Path | None = None, stdin: Path | None = None
) -> Result:
    """:func:`run`, with a run killed at its timeout raised as :func:`timeout_error`."""
    result = run(argv, timeout=timeout, cwd=cwd, stdin=stdin)
    if result.timed_out:
        raise timeout_error(result, timeout)
    return result


def timeout_error(result: Result, timeout: float) -> ToolError:
    """The error for a run that was killed at its timeout."""
    return ToolError(
        f"timed out after {timeout:g} s and was killed (with its process group); "
        f"last output: {summary(result)}",
        result.name,
    )
