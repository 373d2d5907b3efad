"""``pvdesc validate`` over a fleet: finding the descriptions, sharding, worker processes.

For each description (``*.yaml``/``*.yml``, found recursively and sorted by
path; hidden files and folders such as ``.git`` or ``.venv`` are skipped):

1. **build**: :func:`pvdesc.emit.build.plan` parses, allocates and renders every
   output in memory; the outputs are written into a temporary directory;
2. **check**: :func:`pvdesc.audit.check.check` runs on those outputs (DTB, hypervisor
   config, ACPI tables).  It is stricter than ``pvdesc check``: a warning fails
   too, because pvdesc's own allocator never shares a granule;
3. **external validators** (:mod:`pvdesc.tools.validators`): dtc, dt-validate, the iasl
   round trip and acpiexec, as the run's :class:`~pvdesc.commands.validate.results.Externals`
   allow.

One description's work and failures are :mod:`pvdesc.commands.validate.single`'s;
running the external validators over a chunk is :mod:`pvdesc.commands.validate.chunk`'s;
the report model is :mod:`pvdesc.commands.validate.results`.

Descriptions run in chunks of up to :data:`CHUNK`, in parallel worker processes
(``jobs``).  dt-validate's schemas compile in this process while the workers
start and build their first chunk; a worker waits for them only to run
dt-validate (:func:`pvdesc.commands.validate.chunk.await_schema`).  Results
come back in path order, and nothing in a report depends on timing, on the
number of jobs or on how the descriptions were chunked.  ``shard`` (``--shard
K/N``) keeps every N-th description of the sorted list from the K-th, so N
machines split a fleet.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import pairwise, repeat
from pathlib import Path
from typing import NamedTuple

from pvdesc.commands.validate.chunk import resolve_externals, schema_ready, validate_chunk
from pvdesc.commands.validate.memo import Memo
from pvdesc.commands.validate.results import Externals, FileReport, FleetReport, ValidateUsageError
from pvdesc.emit import build
from pvdesc.tools import signals, validators

#: File name suffixes of descriptions.
SUFFIXES = (".yaml", ".yml")


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


# --------------------------------------------------------------------------- the run

#: At most this many descriptions per chunk: one dt-validate process (about 180 ms of
#: start and schema load) serves them all, while the chunks still spread over the workers.
#: A fleet of 1,000 with ``--jobs 2``: 64 gave 16 processes, 10.4 s wall and 17.2 s CPU
#: in-process; 256 gives 4, 9.0 s and 15.1 s; 500 (one chunk per worker) 9.3 s and 15.8 s.
CHUNK = 256


#: Seconds an interrupted run's workers get to stop their tools and remove their folders.
STOP_GRACE = 10.0


def default_jobs() -> int:
    """One worker per CPU."""
    return os.cpu_count() or 1


def chunks(files: Sequence[str], jobs: int, batch: int = CHUNK) -> list[tuple[str, ...]]:
    """``files`` cut, in order, into chunks of at most ``batch``, at least one per worker.

    The chunks are as many as needed, rounded up to a multiple of ``jobs``, and
    as equal as can be, so the workers finish together: 1,000 files for 2 workers
    are 4 chunks of 250, not 256, 256, 256 and 232.
    """
    if not files:
        return []
    count = -(-len(files) // max(1, batch))
    count = min(len(files), -(-count // jobs) * jobs)
    cuts = [len(files) * k // count for k in range(count + 1)]
    return [tuple(files[a:b]) for a, b in pairwise(cuts)]


def _map(
    files: Sequence[str],
    ext: Externals,
    jobs: int,
    batch: int,
    schema: validators.SchemaCompilation | None,
) -> Iterable[FileReport]:
    parts = chunks(files, jobs, batch)
    if jobs == 1 or len(parts) <= 1:
        schema_ready(schema)
        memo = Memo()  # this run's, in this process
        return [r for part in parts for r in validate_chunk(part, ext, memo)]
    # spawn: fresh interpreters, safe whatever threads the caller has.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(parts)), mp_context=ctx, initializer=signals.worker_between_jobs
    )
    try:
        done = pool.map(_validate_in_worker, parts, repeat(ext))  # every chunk submitted
        schema_ready(schema)  # compiled while the workers start: they wait for it (chunk)
        reports = [r for part in done for r in part]
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


#: A worker's :class:`Memo`: a worker is a fresh process that lives for one run.
_WORKER_MEMO = Memo()


def _validate_in_worker(paths: Sequence[str], ext: Externals) -> list[FileReport]:
    """:func:`validate_chunk` in a worker, with SIGTERM/SIGHUP unwinding it (pvdesc.tools.signals).

    The main process passes a stop on as SIGTERM (:func:`_stop_workers`).  The
    worker's chunks share its :data:`_WORKER_MEMO`.
    """
    with signals.stopping():
        return validate_chunk(paths, ext, _WORKER_MEMO)


class Shard(NamedTuple):
    """``--shard K/N``: this run validates the K-th of N interleaved parts of the fleet.

    Attributes:
        index: K, from 1.
        count: N.
    """

    index: int  # type: ignore[assignment]  # shadows tuple.index, which no caller uses
    count: int  # type: ignore[assignment]  # shadows tuple.count, which no caller uses

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
) -> FleetReport:
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
    with signals.scratch("pvdesc-schema-") as tmp:
        ext, schema = resolve_externals(external, Path(tmp))
        with schema or contextlib.nullcontext():
            reports = tuple(_map(files, ext, workers, batch, schema))
    return FleetReport(reports, ext, shard, len(found))


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
