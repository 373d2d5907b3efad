"""``pvdesc validate``: every description under some paths, built, checked and validated.

For each description (``*.yaml``/``*.yml``, found recursively and sorted by
path; hidden files and folders such as ``.git`` or ``.venv`` are skipped):

1. **build**: :func:`pvdesc.emit.build.plan` parses, allocates and renders every
   output in memory; the outputs are written into a temporary directory;
2. **check**: :func:`pvdesc.audit.check.check` runs on those outputs (DTB, hypervisor
   config, ACPI tables).  It is stricter than ``pvdesc check``: a warning fails
   too, because pvdesc's own allocator never shares a granule;
3. **external validators** (:mod:`pvdesc.tools.validators`): dtc, dt-validate, the iasl
   round trip and acpiexec, as the run's :class:`Externals` allow.

A description that cannot be built fails with exactly the line ``pvdesc build``
prints (``file:line:col: key.path: message``).  A failure found in the outputs
points at the description's ``stolen_time`` entry (its first line when there is
none), the part of the description the outputs pair with.

Descriptions run in chunks of up to :data:`CHUNK`, in parallel worker processes
(``jobs``).  Within a chunk each description's outputs get a folder of their own
and the external validators run in batches where the tool takes several inputs:
one dt-validate process (one schema load) checks every DTB of the chunk, and its
findings go back to their description by the file each one names
(:func:`pvdesc.tools.validators.dt_validate_many`).  Results come back in path order,
and nothing in a report depends on timing, on the number of jobs or on how the
descriptions were chunked.  ``shard`` (``--shard K/N``) keeps every N-th
description of the sorted list from the K-th, so N machines split a fleet.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

from pvdesc.audit import check
from pvdesc.audit.findings import Severity
from pvdesc.emit import build, hypervisor
from pvdesc.errors import (
    AcpiError,
    DescriptionError,
    DTError,
    LayoutError,
    OutputError,
    PvdescError,
    ToolError,
)
from pvdesc.read import acpitables, dtb
from pvdesc.tools import signals, validators
from pvdesc.tools.validators import Validator

#: File name suffixes of descriptions.
SUFFIXES = (".yaml", ".yml")


class ValidateUsageError(PvdescError):
    """Arguments ``pvdesc validate`` cannot use: no such path, no descriptions, a missing tool."""


@dataclass(frozen=True)
class Externals:
    """Which external validators a run uses.

    Attributes:
        mode: ``on`` (``--external``: every validator, a missing tool is an error),
            ``off`` (``--no-external``) or ``auto`` (the default: those whose tools exist).
        enabled: the validators that run, in :class:`~pvdesc.tools.validators.Validator` order.
        missing: with ``auto``, the validators skipped because a program is missing,
            as ``(validator, missing program names)``.
        schema: the compiled dtschema file when dt-validate runs (a temporary file that
            lives as long as the run), else ``None``.
    """

    mode: str
    enabled: tuple[Validator, ...]
    missing: tuple[tuple[Validator, tuple[str, ...]], ...]
    schema: str | None


@dataclass(frozen=True)
class Failure:
    """One reason a description failed.

    Attributes:
        rule: what failed: ``description``, ``layout``, ``acpi``, ``devicetree``,
            ``tool`` or ``output`` (the build refused it), ``check:CODE`` (a
            ``pvdesc check`` finding), or a validator's name (``dtc``, ``dt-validate``,
            ``iasl``, ``acpiexec``).
        file: the description's path as found.
        line: 1-based line in the description, or ``None``.
        column: 1-based column, or ``None``.
        message: the text after ``file:line:col: ``.
    """

    rule: str
    file: str
    line: int | None
    column: int | None
    message: str

    @property
    def location(self) -> str:
        """``file:line:col``, or ``file`` without a line."""
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column if self.column is not None else 1}"

    @property
    def text(self) -> str:
        """``file:line:col: message``, as ``pvdesc build`` would print it."""
        return f"{self.location}: {self.message}"


@dataclass(frozen=True)
class FileReport:
    """What validating one description found.

    Attributes:
        path: the description's path as found (relative to the argument given).
        vm: the VM's name when the description could be loaded, else ``None``.
        stages: what ran, in order: ``build``, ``check``, then the validators.
        failures: every failure, in the order found (empty: the file is ok).
    """

    path: str
    vm: str | None
    stages: tuple[str, ...]
    failures: tuple[Failure, ...]

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failures


@dataclass(frozen=True)
class Report:
    """A whole run.

    Attributes:
        files: one report per description, sorted by path.
        externals: the external validators used.
        shard: the part of the fleet this run validated (``--shard``), or ``None``.
        found: how many descriptions the paths hold (more than ``files`` in a shard).
    """

    files: tuple[FileReport, ...]
    externals: Externals
    shard: Shard | None = None
    found: int | None = None

    @property
    def failed(self) -> int:
        """How many descriptions failed."""
        return sum(1 for f in self.files if not f.ok)

    @property
    def ok(self) -> bool:
        """True when every description passed."""
        return self.failed == 0


# --------------------------------------------------------------------------- discovery


def _is_description(name: str) -> bool:
    return name.endswith(SUFFIXES) and not name.startswith(".")


def discover(paths: Sequence[str]) -> tuple[str, ...]:
    """Every description under ``paths``, sorted by path, each file once.

    A directory is searched recursively (symlinked folders are not followed;
    hidden files and folders are skipped); a file given by name is taken
    whatever its suffix.  A path that does not exist, a folder that cannot be
    read, or finding nothing at all, is a :class:`ValidateUsageError`.
    """
    if not paths:
        raise ValidateUsageError("no paths given: name description files or folders")
    found: dict[str, str] = {}

    def unreadable(exc: OSError) -> None:
        raise ValidateUsageError(f"cannot read folder: {exc.strerror}", str(exc.filename))

    for arg in paths:
        root = Path(arg)
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    if _is_description(name):
                        shown = str(Path(dirpath) / name)
                        found.setdefault(os.path.realpath(shown), shown)
        elif root.exists():
            found.setdefault(os.path.realpath(root), str(root))
        else:
            raise ValidateUsageError("no such file or folder", arg)
    if not found:
        raise ValidateUsageError(
            f"no descriptions (*{' or *'.join(SUFFIXES)}) under {' '.join(paths)}"
        )
    return tuple(sorted(found.values()))


# --------------------------------------------------------------------------- externals


def resolve_externals(mode: bool | None, workdir: Path) -> Externals:
    """The validators to run: all (``True``), none (``False``) or those available (``None``).

    With ``True`` a missing program is a :class:`ValidateUsageError` naming every
    missing one.  When dt-validate runs its schemas are compiled into ``workdir``.
    """
    if mode is False:
        return Externals("off", (), (), None)
    missing = tuple((v, progs) for v in Validator if (progs := validators.missing_programs(v)))
    if mode is True and missing:
        text = "; ".join(
            f"{v} needs {', '.join(progs)} ({validators.INSTALL[v]})" for v, progs in missing
        )
        raise ValidateUsageError(
            f"cannot run every external validator: {text}; or use --no-external", "--external"
        )
    absent = {v for v, _ in missing}
    enabled = tuple(v for v in Validator if v not in absent)
    schema = None
    if Validator.DT_VALIDATE in enabled:
        try:
            schema = str(validators.compile_schema(workdir))
        except ToolError as err:
            raise ValidateUsageError(str(err), "--external") from None
    return Externals("on" if mode else "auto", enabled, missing, schema)


# --------------------------------------------------------------------------- one file

_RULES: tuple[tuple[type[PvdescError], str], ...] = (
    (DescriptionError, "description"),
    (LayoutError, "layout"),
    (AcpiError, "acpi"),
    (DTError, "devicetree"),
    (ToolError, "tool"),
    (OutputError, "output"),
)
_LOCATION_RE = re.compile(r"^(?P<line>\d+):(?P<col>\d+): (?P<rest>.*)$", re.DOTALL)


def _split(path: str, text: str, rule: str) -> Failure:
    """A failure from ``where: message`` text, keeping ``path:line:col`` when it leads."""
    if text.startswith(f"{path}:"):
        rest = text[len(path) + 1 :]
        m = _LOCATION_RE.match(rest)
        if m:
            return Failure(rule, path, int(m["line"]), int(m["col"]), m["rest"])
        if rest.startswith(" "):
            return Failure(rule, path, None, None, rest[1:])
    return Failure(rule, path, None, None, text)


def build_failure(path: str, err: PvdescError) -> Failure:
    """The failure for a description ``pvdesc build`` refuses: the same text it prints."""
    rule = next((name for cls, name in _RULES if isinstance(err, cls)), "build")
    return _split(path, str(err), rule)


def _anchor(result: build.BuildResult) -> tuple[int | None, int | None]:
    where = result.loaded.source.locate(("stolen_time",), key=True)
    _, line, col = where.rsplit(":", 2)
    return int(line), int(col)


def _check_findings(result: build.BuildResult) -> list[tuple[str, str]]:
    """``(rule, message)`` for every error or warning ``pvdesc check`` finds in the outputs."""
    files = {o.name: o.data for o in result.outputs}
    name = result.layout.description.name
    try:
        tree = dtb.parse(files[f"{name}.dtb"], f"{name}.dtb")
        target = hypervisor.target_from_config(
            files[f"{name}.hypervisor.json"], f"{name}.hypervisor.json"
        )
        tables = [
            acpitables.parse(data, fname) for fname, data in files.items() if fname.endswith(".aml")
        ]
    except PvdescError as err:
        return [("check", f"check cannot read the outputs: {err}")]
    findings = check.check(tree, target, result.layout.description.boot, tables)
    return [
        (
            f"check:{f.code}",
            f"check {f.code} ({f.severity}) at {f.source} [{f.range}]: {f.message}",
        )
        for f in findings
        if f.severity is not Severity.INFO
    ]


@dataclass
class _Built:
    """A description built and checked, its outputs written into its own folder.

    Attributes:
        path: the description's path as found.
        result: the build.
        folder: the folder under the chunk's work directory holding its outputs.
        anchor: ``(line, column)`` every output failure points at.
        failures: the check findings so far.
        problems: each enabled validator's problems, filled in validator by validator.
    """

    path: str
    result: build.BuildResult
    folder: Path
    anchor: tuple[int | None, int | None]
    failures: list[Failure]
    problems: dict[Validator, list[validators.Problem]]

    @property
    def name(self) -> str:
        return self.result.layout.description.name

    def names(self) -> list[str]:
        return [o.name for o in self.result.outputs]

    def amls(self) -> list[tuple[str, bytes]]:
        return [(o.name, o.data) for o in self.result.outputs if o.name.endswith(".aml")]

    def ssdt(self) -> bytes | None:
        return next((data for fname, data in self.amls() if fname.endswith(".ssdt.aml")), None)

    def applies(self, v: Validator, ext: Externals) -> bool:
        """Whether validator ``v`` has anything to check in these outputs."""
        if v is Validator.DT_VALIDATE:
            return ext.schema is not None
        if v is Validator.IASL:
            return bool(self.amls())
        if v is Validator.ACPIEXEC:
            return self.ssdt() is not None
        return True

    def report(self, ext: Externals) -> FileReport:
        line, col = self.anchor
        stages = ["build", "check"]
        failures = list(self.failures)
        for v in ext.enabled:
            if v not in self.problems:
                continue
            stages.append(str(v))
            failures += [
                Failure(str(p.validator), self.path, line, col, f"{p.validator}: {p.message}")
                for p in self.problems[v]
            ]
        return FileReport(self.path, self.name, tuple(stages), tuple(failures))


def _prepare(path: str, folder: Path) -> _Built | FileReport:
    """Build and check one description and write its outputs into ``folder``.

    A :class:`FileReport` when it is finished already (the build refused it, or its
    outputs could not be written).
    """
    try:
        result = build.plan(path)
    except PvdescError as err:
        return FileReport(path, None, ("build",), (build_failure(path, err),))
    line, col = _anchor(result)
    failures = [Failure(rule, path, line, col, msg) for rule, msg in _check_findings(result)]
    # A scratch folder deleted with the chunk: plain writes, no fsync (build.write_outputs is
    # for the user's folder).
    try:
        folder.mkdir()
        for out in result.outputs:
            (folder / out.name).write_bytes(out.data)
    except OSError as exc:
        message = f"cannot write outputs to a temporary folder: {exc.strerror}"
        failures.append(Failure("output", path, None, None, message))
        name = result.layout.description.name
        return FileReport(path, name, ("build", "check"), tuple(failures))
    return _Built(path, result, folder, (line, col), failures, {})


def _run_validators(built: Sequence[_Built], ext: Externals, workdir: Path) -> None:
    """Run every enabled validator over ``built`` (outputs under ``workdir``), in batches.

    dt-validate takes every DTB of the chunk in one process (one schema load);
    each problem is mapped back to its description, and a batch without a usable
    answer is run again one DTB at a time (:func:`validators.dt_validate_many`).
    dtc, the iasl round trip and acpiexec run per description: dtc takes one input,
    and iasl and acpiexec load every file given into one ACPI namespace, where two
    SSDTs that both define ``\\_SB.PVTM`` collide.
    """
    for v in ext.enabled:
        todo = [b for b in built if b.applies(v, ext)]
        if v is Validator.DT_VALIDATE and ext.schema is not None:
            schema = Path(ext.schema)
            pairs = [
                (str(b.folder.relative_to(workdir) / f"{b.name}.dtb"), f"{b.name}.dtb")
                for b in todo
            ]
            found = validators.dt_validate_many(workdir, pairs, schema) if len(todo) > 1 else None
            for i, b in enumerate(todo):
                b.problems[v] = (
                    found[i]
                    if found is not None
                    else validators.dt_validate(b.folder, f"{b.name}.dtb", schema)
                )
            continue
        for b in todo:
            if v is Validator.DTC:
                dts = f"{b.name}.dts" if f"{b.name}.dts" in b.names() else None
                b.problems[v] = validators.dtc(b.folder, f"{b.name}.dtb", dts)
            elif v is Validator.IASL:
                b.problems[v] = [
                    p for fname, data in b.amls() for p in validators.iasl_round_trip(fname, data)
                ]
            elif v is Validator.ACPIEXEC:
                ssdt = b.ssdt()
                assert ssdt is not None  # applies() said so
                b.problems[v] = validators.acpiexec(
                    f"{b.name}.ssdt.aml", ssdt, b.result.layout.region
                )


def validate_chunk(paths: Sequence[str], ext: Externals) -> list[FileReport]:
    """Build, check and externally validate some descriptions together (in one worker).

    Each description's outputs go to a folder of its own, so equal VM names never
    clash; the external validators then run over all of them in batches.  The
    reports are those :func:`validate_file` gives for each path alone.
    """
    with tempfile.TemporaryDirectory(prefix="pvdesc-validate-") as tmp:
        workdir = Path(tmp)
        prepared = [_prepare(path, workdir / f"{i:05d}") for i, path in enumerate(paths)]
        built = [p for p in prepared if isinstance(p, _Built)]
        _run_validators(built, ext, workdir)
        return [p.report(ext) if isinstance(p, _Built) else p for p in prepared]


def validate_file(path: str, ext: Externals) -> FileReport:
    """Build, check and externally validate one description on its own (a chunk of one)."""
    [report] = validate_chunk([path], ext)
    return report


# --------------------------------------------------------------------------- the run

#: At most this many descriptions per chunk: one dt-validate process (about 150 ms of
#: start and schema load) serves them all, while the chunks still spread over the workers.
CHUNK = 64


#: Seconds an interrupted run's workers get to stop their tools and remove their folders.
STOP_GRACE = 10.0


def default_jobs() -> int:
    """One worker per CPU."""
    return os.cpu_count() or 1


def chunks(files: Sequence[str], jobs: int, batch: int = CHUNK) -> list[tuple[str, ...]]:
    """``files`` cut, in order, into chunks of at most ``batch``, at least one per worker."""
    if not files:
        return []
    size = max(1, min(batch, -(-len(files) // jobs)))
    return [tuple(files[i : i + size]) for i in range(0, len(files), size)]


def _map(files: Sequence[str], ext: Externals, jobs: int, batch: int) -> Iterable[FileReport]:
    parts = chunks(files, jobs, batch)
    if jobs == 1 or len(parts) <= 1:
        return [r for part in parts for r in validate_chunk(part, ext)]
    # spawn: fresh interpreters, safe whatever threads the caller has.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(parts)), mp_context=ctx, initializer=signals.worker_between_jobs
    )
    try:
        reports = [r for part in pool.map(_validate_in_worker, parts, repeat(ext)) for r in part]
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)
    return reports


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the workers of an interrupted run, and start no more descriptions.

    SIGTERM/SIGHUP reached only this process (SIGINT from a terminal reaches the
    whole group): it is passed on, so each busy worker kills its tool's group and
    removes its folder as pvdesc itself does (:func:`_validate_in_worker`).  A
    worker that has not ended :data:`STOP_GRACE` seconds later is killed: the
    executor's own shutdown waited forever for a worker whose sibling it had
    found dead.
    """
    workers = list(getattr(pool, "_processes", {}).values())
    for worker in workers:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            worker.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + STOP_GRACE
    for worker in workers:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.kill()
                worker.join(STOP_GRACE)


def _validate_in_worker(paths: Sequence[str], ext: Externals) -> list[FileReport]:
    """:func:`validate_chunk` in a worker, with SIGTERM/SIGHUP unwinding it (pvdesc.tools.signals).

    The main process passes a stop on as SIGTERM (:func:`_stop_workers`).
    """
    with signals.stopping():
        return validate_chunk(paths, ext)


@dataclass(frozen=True)
class Shard:
    """``--shard K/N``: this run validates the K-th of N interleaved parts of the fleet.

    Attributes:
        index: K, from 1.
        count: N.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``K/N`` with 1 <= K <= N; a :class:`ValidateUsageError` otherwise."""
        k, sep, n = text.partition("/")
        if not sep or not k.isdigit() or not n.isdigit():
            raise ValidateUsageError(f"{text!r} is not K/N (e.g. 2/4)", "--shard")
        shard = cls(int(k), int(n))
        if not 1 <= shard.index <= shard.count:
            raise ValidateUsageError(f"{text!r}: K must be from 1 to N", "--shard")
        return shard

    def select(self, files: Sequence[str]) -> tuple[str, ...]:
        """Every N-th file of the sorted list, from the K-th: the shards partition it."""
        return tuple(files[self.index - 1 :: self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def run(
    paths: Sequence[str],
    *,
    jobs: int | None = None,
    external: bool | None = None,
    shard: Shard | None = None,
    batch: int = CHUNK,
) -> Report:
    """Validate every description under ``paths`` with ``jobs`` processes; see the module doc.

    ``shard`` keeps only that part of the sorted descriptions; ``batch`` bounds how
    many descriptions share one chunk (1: every description on its own, as before
    batching; the report is the same for any value).
    """
    workers = default_jobs() if jobs is None else jobs
    if workers < 1:
        raise ValidateUsageError(f"must be at least 1 (got {workers})", "--jobs")
    if batch < 1:
        raise ValidateUsageError(f"batch must be at least 1 (got {batch})")
    found = discover(paths)
    files = shard.select(found) if shard is not None else found
    with tempfile.TemporaryDirectory(prefix="pvdesc-schema-") as tmp:
        ext = resolve_externals(external, Path(tmp))
        reports = tuple(_map(files, ext, workers, batch))
    return Report(reports, ext, shard, len(found))


# --------------------------------------------------------------------------- report files


def check_report_path(path: str, option: str) -> None:
    """Refuse a report path that cannot be written, before any work is done."""
    target = Path(path)
    if target.is_dir():
        raise ValidateUsageError("is a folder; name a file", option)
    probe = target.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValidateUsageError(f"cannot create {path}: {probe} is not a writable folder", option)


def write_report(path: str, data: bytes) -> None:
    """Write a report file atomically (temporary file, fsync, rename: never half-written)."""
    target = Path(path)
    build.write_outputs(target.parent, [build.Output(target.name, "report", data)])
