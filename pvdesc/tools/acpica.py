"""The one wrapper for ACPICA's ``iasl`` (compiler/disassembler) and ``acpiexec`` (AML interpreter).

Every call runs the tool through :func:`pvdesc.tools.proc.run` (an argument list, no
shell, stdin closed, its own process group killed whole at the timeout, stderr
captured into the error) in a fresh temporary directory; nothing is ever
written next to the user's outputs.
Behaviour relied on, all measured with acpica-tools 20200925 (docs/acpi.md §4):

- ``iasl -vs`` drops the banner, ``-we`` turns warnings into errors, ``-vi``
  prints ``file(line) : error NNNN - text`` on stderr, ``-p prefix`` names the
  output file (the DefinitionBlock's first argument is ``""``);
- iasl exits 0 on success (even with remarks) and **255** on any error (§4.3);
- ``iasl -d`` disassembles AML and data tables; ``-z`` would keep a data
  table's compiler ID, which pvdesc does not need (§4.2);
- ``acpiexec t.aml`` supplies its own RSDP/XSDT/FACP/DSDT and **exits 0 even
  when an evaluation fails**, so its output is searched for ``failed with
  status``, ``ACPI Error``, ``Firmware Error`` and ``Firmware Warning`` (§4.4;
  read back by :mod:`pvdesc.tools.acpica_text`, which also mends the stray
  newline its command thread drops into the start-up messages).
  Its commands are read from stdin, one a line, ending with ``quit``: the batch
  option ``-b "cmd; cmd"`` runs the same commands but then waits for its
  debugger threads in 100 ms sleeps (``AcpiTerminateDebugger`` in ACPICA's
  ``dbxface.c``), a whole second per run, with the same output otherwise (the
  interactive prompt echoes each command as ``- cmd``).

A compiler error in generated ASL is reported against the template line it
came from (:func:`template_line`), never as a raw dump.

Every run's wall time can be observed with :func:`timing` (``bench/run`` uses it
to split ``pvdesc build`` into pvdesc's own time and ACPICA's).
"""

from __future__ import annotations

import contextlib
import contextvars
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Self

from pvdesc.errors import AcpiError, ToolError
from pvdesc.tools import acpica_text, proc, signals

#: The Debian package that ships iasl and acpiexec.
PACKAGE = "acpica-tools"
#: Seconds any one iasl/acpiexec run may take; the tables pvdesc emits compile in milliseconds.
TIMEOUT = 60.0


class ToolTimes:
    """How long pvdesc waited for the ACPICA runs made inside one :func:`timing` block.

    For a run pvdesc waits through (:func:`compile_asl`, :func:`disassemble`) that
    is its wall time; for a :class:`Compilation` started early, only the time the
    caller was blocked in :meth:`Compilation.aml`, so ``build time - total`` is
    the time pvdesc spent working, whatever ran alongside.

    Attributes:
        runs: ``(tool name, seconds)`` per subprocess, in the order waited for.
    """

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: list[tuple[str, float]] = []

    @property
    def total(self) -> float:
        """Seconds spent waiting for ACPICA subprocesses altogether."""
        return sum(secs for _, secs in self.runs)


#: The active :func:`timing` recorders (a context variable: threads do not share them).
_recorders: contextvars.ContextVar[tuple[ToolTimes, ...]] = contextvars.ContextVar(
    "pvdesc_acpica_recorders", default=()
)


@contextlib.contextmanager
def timing() -> Iterator[ToolTimes]:
    """Record the time spent waiting for every iasl/acpiexec run inside the ``with`` block.

    Blocks nest (each sees every run inside it).  Measuring costs two clock reads
    per run; nothing is recorded outside a block.
    """
    times = ToolTimes()
    token = _recorders.set((*_recorders.get(), times))
    try:
        yield times
    finally:
        _recorders.reset(token)


def tool(name: str) -> str:
    """The path of an ACPICA tool; :class:`ToolError` naming the package when missing."""
    how = f"install the Debian package {PACKAGE} (apt-get install {PACKAGE}), or run scripts/setup"
    return proc.program(name, how)


def _scratch(tool_name: str, files: Mapping[str, bytes]) -> tempfile.TemporaryDirectory[str]:
    """A new temporary directory holding ``files`` for one tool run (the caller removes it).

    A temporary directory that cannot be made or written (``TMPDIR`` missing,
    a full disk) is a one-line :class:`ToolError`, not a traceback.  Any other
    interruption while it is written (SIGTERM: :mod:`pvdesc.tools.signals`) removes it.
    """
    try:
        with signals.deferred():  # a stop waits until the folder can be removed (signals.scratch)
            tmp = tempfile.TemporaryDirectory(prefix=f"pvdesc-{tool_name}-")
    except OSError as exc:
        raise ToolError(
            f"cannot create a temporary directory for its files: {exc.strerror or exc}"
            + (f": {exc.filename}" if exc.filename else "")
            + " (set TMPDIR to a writable directory)",
            tool_name,
        ) from None
    try:
        for name, data in files.items():
            (Path(tmp.name) / name).write_bytes(data)
    except OSError as exc:
        tmp.cleanup()
        raise ToolError(
            f"cannot write its input in {tmp.name}: {exc.strerror or exc}", tool_name
        ) from None
    except BaseException:
        tmp.cleanup()
        raise
    return tmp


def _record(argv: Sequence[str], seconds: float) -> None:
    """Add one run to every active :func:`timing` recorder."""
    for rec in _recorders.get():
        rec.runs.append((Path(argv[0]).name, seconds))


def _run(argv: Sequence[str], cwd: Path, stdin: Path | None = None) -> proc.Result:
    start = time.perf_counter()
    try:
        return proc.run_checked(argv, timeout=TIMEOUT, cwd=cwd, stdin=stdin)
    finally:
        _record(argv, time.perf_counter() - start)


def template_line(template: str, rendered: str, line: int) -> int | None:
    """The line of ``templates/<template>`` that produced line ``line`` of ``rendered``.

    See :func:`pvdesc.tools.asltemplate.template_line`; imported only when a
    message needs a template line.
    """
    from pvdesc.tools import asltemplate

    return asltemplate.template_line(template, rendered, line)


def compile_asl(source: str, *, template: str, name: str = "table") -> bytes:
    """Compile ASL (or data-table) text rendered from ``templates/<template>`` to AML bytes.

    Runs ``iasl -vs -vi -we -p <tmp>/<name> <tmp>/<name>.asl``.  Any error or
    warning raises :class:`AcpiError` at ``templates/<template>:<line>`` (the
    template line the first message's ASL line came from).
    """
    with Compilation(source, template=template, name=name) as job:
        return job.aml()


class _Started:
    """An ACPICA tool started in a temporary folder of its own, not yet waited for.

    Leaving its ``with`` block stops a tool nobody waited for and removes its folder.
    """

    _tmp: tempfile.TemporaryDirectory[str]
    _work: Path
    _job: proc.Running

    def _start(
        self,
        tool_name: str,
        files: Mapping[str, bytes],
        argv: Callable[[Path], Sequence[str]],
        stdin: str = "",
    ) -> None:
        """Write ``files`` into a new folder and start ``argv(folder)`` there (``stdin``: a file
        of them)."""
        # A stopping signal is held back until the folder is ours to remove (pvdesc.tools.signals).
        with signals.deferred():
            self._tmp = _scratch(tool_name, files)
        try:
            signals.raise_pending()
            self._work = Path(self._tmp.name)
            feed = self._work / stdin if stdin else None
            self._job = proc.start(argv(self._work), timeout=TIMEOUT, cwd=self._work, stdin=feed)
        except BaseException:
            self._tmp.cleanup()
            raise

    def _finished(self) -> proc.Result:
        """Wait for the tool (recorded for :func:`timing`); a run killed at its timeout raised."""
        try:
            result = self._job.wait()
        finally:
            _record(self._job.argv, self._job.waited)
        if result.timed_out:
            raise proc.timeout_error(result, TIMEOUT)
        return result

    def close(self) -> None:
        """Stop the tool if nobody waited for it; remove the temporary directory."""
        try:
            self._job.close()
        finally:
            self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Compilation(_Started):
    """:func:`compile_asl` started, not yet waited for: iasl runs while the caller works.

    Errors are raised by :meth:`aml` (a non-ASCII source, before iasl starts, by
    the constructor).  Use it as a context manager: leaving the block stops an
    iasl nobody waited for and removes its temporary directory.

    Attributes:
        source: the ASL text.
        template: the template it was rendered from (errors point into it).
        name: the table's name (``ssdt``, ``srat``), used for the file names.
    """

    def __init__(self, source: str, *, template: str, name: str = "table") -> None:
        self.source = source
        self.template = template
        self.name = name
        iasl = tool("iasl")
        if not source.isascii():
            bad = next(i for i, ch in enumerate(source) if not ch.isascii())
            line = source.count("\n", 0, bad) + 1
            tline = template_line(template, source, line)
            raise AcpiError(
                f"generated ASL line {line} holds a non-ASCII character {source[bad]!r}; "
                "iasl reads ASCII only",
                f"templates/{template}:{tline}" if tline else f"templates/{template}",
            )
        self._start(
            "iasl",
            {f"{name}.asl": source.encode("ascii")},
            lambda work: [iasl, "-vs", "-vi", "-we", "-p", str(work / name), f"{name}.asl"],
        )

    def aml(self) -> bytes:
        """Wait for iasl; the AML bytes, or :class:`AcpiError` / :class:`ToolError`."""
        res = self._finished()
        aml_path = self._work / f"{self.name}.aml"
        if res.returncode == 0 and aml_path.is_file():
            return aml_path.read_bytes()
        source, template = self.source, self.template
        diags = acpica_text.parse_diagnostics(res.stderr + "\n" + res.stdout)
        first = next((d for d in diags if d.level == "error" and d.code != 6154), None)
        first = first or (diags[0] if diags else None)
        if first is None:
            raise ToolError(
                f"failed (exit {res.returncode}) on {template}: {proc.summary(res)}", "iasl"
            )
        asl_lines = source.splitlines()
        text = asl_lines[first.line - 1].strip() if 0 < first.line <= len(asl_lines) else ""
        tline = template_line(template, source, first.line)
        where = f"templates/{template}:{tline}" if tline else f"templates/{template}"
        raise AcpiError(
            f"iasl {first.level} {first.code} - {first.text} "
            f"(generated ASL line {first.line}: {text!r})",
            where,
        )


def disassemble(aml: bytes, name: str = "table") -> str:
    """``iasl -d``: the disassembled ASL (or data-table) text of one table."""
    iasl = tool("iasl")
    with _scratch("iasl", {f"{name}.aml": aml}) as tmp:
        work = Path(tmp)
        res = _run([iasl, "-vs", "-p", str(work / "dis"), "-d", f"{name}.aml"], work)
        out = work / "dis.dsl"
        if res.returncode != 0 or not out.is_file():
            raise AcpiError(f"iasl -d failed (exit {res.returncode}): {proc.summary(res)}", name)
        text = out.read_text(encoding="ascii", errors="replace")
        problems = acpica_text.failures(res.stdout + res.stderr)
        if problems:
            raise AcpiError(f"iasl -d: {problems[0]}", name)
        return text


def recompile(dsl: str, name: str = "table") -> bytes:
    """Compile disassembler output (no template to map errors to) with the same flags."""
    iasl = tool("iasl")
    with _scratch("iasl", {f"{name}.dsl": dsl.encode("ascii")}) as tmp:
        work = Path(tmp)
        res = _run([iasl, "-vs", "-vi", "-we", "-p", str(work / name), f"{name}.dsl"], work)
        out = work / f"{name}.aml"
        if res.returncode != 0 or not out.is_file():
            raise AcpiError(f"iasl failed (exit {res.returncode}): {proc.summary(res)}", name)
        return out.read_bytes()


def acpiexec(tables: Sequence[bytes], commands: Sequence[str]) -> str:
    """Load ``tables`` into ``acpiexec`` and run ``commands``, then ``quit``; return its output.

    The commands are acpiexec's standard input, one a line (see the module doc
    for why not ``-b``).  Raises :class:`AcpiError` when the output reports a
    failure (acpiexec's exit status cannot be trusted, docs/acpi.md §4.4).
    Resource-trace lines are dropped from the returned text.
    """
    with Execution(tables, commands) as job:
        return job.output()


class Execution(_Started):
    """:func:`acpiexec` started, not yet waited for: it runs (mostly asleep, ~110 ms as
    its debugger thread shuts down) while the caller works.  Errors found before it
    starts are raised by the constructor, the others by :meth:`output`.  Leaving
    its ``with`` block stops an acpiexec not waited for and removes its folder.

    Attributes:
        argv: the command as started.
    """

    def __init__(self, tables: Sequence[bytes], commands: Sequence[str]) -> None:
        exe = tool("acpiexec")
        if not tables:
            raise AcpiError("acpiexec needs at least one table", "acpiexec")
        if any("\n" in c or "\r" in c for c in commands):
            raise AcpiError("an acpiexec command is one line", "acpiexec")
        files = {f"t{i}.aml": data for i, data in enumerate(tables)}
        script = "".join(f"{c}\n" for c in [*commands, "quit"]).encode()
        self.argv = [exe, *files]
        self._start(
            "acpiexec", {**files, "commands.txt": script}, lambda _: self.argv, "commands.txt"
        )

    def output(self) -> str:
        """Wait for acpiexec; its output, or :class:`AcpiError` / :class:`ToolError`."""
        result = self._finished()
        text = result.stdout + "\n" + result.stderr
        output = "\n".join(ln for ln in text.splitlines() if not acpica_text.is_trace(ln))
        if result.returncode != 0:
            raise AcpiError(
                f"acpiexec exited {result.returncode}: {proc.summary(result)}", "acpiexec"
            )
        problems = acpica_text.failures(output)
        if problems:
            raise AcpiError(problems[0], "acpiexec")
        return output
