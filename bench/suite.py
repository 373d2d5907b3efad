"""``bench/run``: pvdesc's speed against dtc and iasl, and its own targets, in one run.

Every figure is the median of repeated runs (one warm-up run first, not counted),
in wall time and, beside it, in CPU time (user + system, children included), which
other load on the machine disturbs less.  Command figures are fresh processes of the
installed ``pvdesc`` entry point, interpreter start included.

1. ``pvdesc build`` of a large VM (``bench/data/large-vm.yaml``: 512 vCPUs, 16 NUMA
   banks, 200 devices, boot uefi-acpi: DTS/DTB, SSDT + SRAT compiled by iasl,
   hypervisor config, C and Rust): the command's wall time; in-process, split into
   the time pvdesc works and the time it then waits for iasl, which it starts
   before rendering the rest (:func:`pvdesc.tools.acpica.timing`); and, as the
   baseline, ``dtc -I dts -O dtb`` plus ``iasl`` on the very files it wrote.
   Figure: pvdesc / (dtc + iasl), target <= 1.5 for the library call (the
   command adds the interpreter's start and imports, shown beside it).
2. ``pvdesc check`` on QEMU's dumped DTB (``-machine virt,dumpdtb=`` with 512
   vCPUs: QEMU 7.2 writes a 1 MiB blob, ~79 KiB of it used) and on a generated
   10,002-node DTB (:func:`inputs.nested_dtb`); the
   overlap sweep on 10k and 100k ranges and its growth (n log n predicts
   10 * log(100k) / log(10k) = 12.5; n^2 would be 100).
   The ``pvdesc check`` command on QEMU's DTB is also timed against a bare
   ``python -c pass`` of the same interpreter, the two run in turn (A B A B ...),
   and the ratio taken run by run: target <= 2.  The build command's ratio to
   dtc + iasl has the target <= 3.
3. ``pvdesc --version`` cold start, and which modules it imports (``-X importtime``).
4. ``pvdesc validate examples/`` with ``--jobs 1`` and ``--jobs 2`` (when the
   installed pvdesc has ``validate``), and a fleet of 1,000 descriptions made by
   :func:`inputs.fleet` (the examples in turn, renamed) with ``--jobs 2 --external``
   (every external validator): target < 20 s; ``--no-external`` beside it.
5. Loading hostile descriptions just under the limits (:func:`inputs.hostile_yaml`:
   1 MiB, at most 100,000 nodes, or past them only by the node count), beside the
   10 KiB large VM: each must be answered (refused) in well under a second, target
   <= 0.5 s.  This part's targets are asserted: ``bench/run`` exits 1 on a miss
   (in full mode; ``--quick`` shrinks the inputs).

The package is byte-compiled first (``python -m compileall``), as pip does when it
installs a wheel: a module without current bytecode would be compiled from source
in every timed process (``PYTHONDONTWRITEBYTECODE`` keeps it so).

``--quick`` runs everything once on smaller inputs (to keep this script working;
its figures mean nothing).  Results go to a table on stdout and to JSON
(``bench/results.json`` or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import inputs

import pvdesc
from pvdesc.core.ranges import Range, sweep_overlaps
from pvdesc.emit import build
from pvdesc.read import dtb
from pvdesc.tools import acpica
from pvdesc.tools.proc import find_program

ROOT = Path(__file__).resolve().parent.parent
FORMAT = "pvdesc.bench/1"
DEFAULT_JSON = ROOT / "bench" / "results.json"
#: Any one external command may take this long before the benchmark gives up.
TIMEOUT = 300.0
#: Modules ``pvdesc --version`` must not import (each costs tens of milliseconds).
HEAVY_MODULES = (
    "yaml",
    "jinja2",
    "jsonschema",
    "libfdt",
    "fdt",
    "pvdesc.emit.build",
    "pvdesc.audit.check",
)
#: The region and vCPU count ``pvdesc check`` audits (QEMU's VIRT_PVTIME).
REGION = "0x090a0000:64K"
#: The parts ``--only`` selects from, in the order they run.
PARTS = ("build", "check", "version", "validate", "fleet", "yaml")
#: Descriptions in the validate fleet (``--quick``: one of each example).
FLEET = 1000
#: Seconds within which any description under the limits must be answered (part 5).
YAML_LIMIT = 0.5


@dataclass
class Result:
    """One row of the table.

    Attributes:
        key: stable JSON key.
        what: the row's label.
        value: median wall seconds (unit ``s``) or a ratio of them (unit ``x``);
            ``None`` if skipped.
        unit: ``s`` or ``x``.
        cpu: the same figure in CPU time (median CPU seconds, or their ratio).
        limit: the target's upper bound in the same unit, or ``None`` (information only).
        note: why it was skipped, or what the target means.
        detail: extra figures for the JSON (sizes, every sample, ...).
    """

    key: str
    what: str
    value: float | None
    unit: str
    cpu: float | None = None
    limit: float | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.value is None:
            return "skipped"
        if self.limit is None:
            return "info"
        return "pass" if self.value <= self.limit else "miss"

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "value": self.value,
            "unit": self.unit,
            "cpu": self.cpu,
            "target": self.limit,
            "status": self.status,
            "note": self.note,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Config:
    """How big and how often.

    Attributes:
        quick: one repeat, small inputs.
        repeats: timed runs per figure (after one warm-up).
        slow_repeats: timed runs of the 100k sweep.
    """

    quick: bool
    repeats: int
    slow_repeats: int

    @property
    def validate_repeats(self) -> int:
        """``pvdesc validate examples/`` takes seconds: at most 7 runs."""
        return min(self.repeats, 7)

    @property
    def fleet_repeats(self) -> int:
        """The 1,000-description fleet takes about 15 s a run: at most 3 runs."""
        return min(self.repeats, 3)

    @property
    def fleet(self) -> int:
        return 16 if self.quick else FLEET

    @property
    def vcpus(self) -> int:
        return 64 if self.quick else 512

    @property
    def banks(self) -> int:
        return 4 if self.quick else 16

    @property
    def devices(self) -> int:
        return 20 if self.quick else 200

    @property
    def buses(self) -> int:
        return 10 if self.quick else 100

    @property
    def sweep_small(self) -> int:
        return 1_000 if self.quick else 10_000

    @property
    def sweep_large(self) -> int:
        return 10_000 if self.quick else 100_000


# --------------------------------------------------------------------------- timing


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Timing:
    """Repeated measurements of one thing.

    Attributes:
        wall: wall-clock seconds per run.
        cpu: CPU seconds per run (user + system, this process and its children):
            less disturbed than wall time when other work shares the machine.
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    def to_json(self) -> dict[str, Any]:
        return {"wall": self.wall, "cpu": self.cpu}


def samples(fn: Callable[[], object], repeats: int) -> Timing:
    """``repeats`` timed calls of ``fn``, after one untimed warm-up call when ``repeats`` > 1."""
    if repeats > 1:
        fn()
    out = Timing()
    for _ in range(repeats):
        cpu = cpu_seconds()
        start = time.perf_counter()
        fn()
        out.wall.append(time.perf_counter() - start)
        out.cpu.append(cpu_seconds() - cpu)
    return out


def run(argv: Sequence[str], *, ok: Sequence[int] = (0,), cwd: Path | None = None) -> str:
    """Run a command (no shell, with a timeout); its stdout, or RuntimeError."""
    proc = subprocess.run(
        [find_program(argv[0]) or argv[0], *argv[1:]],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
        cwd=cwd,
    )
    if proc.returncode not in ok:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout + proc.stderr


def timed_command(
    argv: Sequence[str], repeats: int, *, ok: Sequence[int] = (0,), cwd: Path | None = None
) -> Timing:
    return samples(lambda: run(argv, ok=ok, cwd=cwd), repeats)


def paired(
    a: Sequence[str], b: Sequence[str], repeats: int
) -> tuple[Timing, Timing, list[float], list[float]]:
    """``a`` and ``b`` run in turn (one warm-up each when ``repeats`` > 1).

    Returns both timings and the ratios a/b of each pair, wall and CPU: a pair
    shares the machine's state of the moment, so the ratio holds when the
    machine's speed drifts.
    """
    if repeats > 1:
        run(a)
        run(b)
    ta, tb = Timing(), Timing()
    for _ in range(repeats):
        for argv, t in ((a, ta), (b, tb)):
            cpu = cpu_seconds()
            start = time.perf_counter()
            run(argv)
            t.wall.append(time.perf_counter() - start)
            t.cpu.append(cpu_seconds() - cpu)
    wall_ratios = [x / y for x, y in zip(ta.wall, tb.wall, strict=True)]
    cpu_ratios = [x / y for x, y in zip(ta.cpu, tb.cpu, strict=True) if y > 0]
    return ta, tb, wall_ratios, cpu_ratios


def combine(parts: Sequence[Timing]) -> Timing:
    """Run-by-run sums of several timings (e.g. dtc + iasl + iasl)."""
    return Timing(
        [sum(col) for col in zip(*(p.wall for p in parts), strict=True)],
        [sum(col) for col in zip(*(p.cpu for p in parts), strict=True)],
    )


def pvdesc_cmd() -> list[str]:
    """The installed ``pvdesc`` entry point next to this interpreter (what users run)."""
    script = Path(sys.executable).parent / "pvdesc"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "pvdesc"]


# --------------------------------------------------------------------------- machine


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def tool_version(argv: Sequence[str], pattern: str) -> str | None:
    if find_program(argv[0]) is None:
        return None
    try:
        text = run(argv, ok=range(256))
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(pattern, text)
    return m.group(0) if m else _first_line(text)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    commit = None
    if find_program("git"):
        try:
            commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip()
        except (OSError, RuntimeError, subprocess.SubprocessError):
            commit = None
    return {
        "cpu": cpu,
        "cores": usable,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pvdesc": pvdesc.__version__,
        "commit": commit,
        "loadavg": list(os.getloadavg()),
        "tools": {
            "dtc": tool_version(["dtc", "--version"], r"\d+\.\d+\.\d+"),
            "iasl": tool_version(["iasl", "-v"], r"version \d+"),
            "qemu-system-aarch64": tool_version(
                ["qemu-system-aarch64", "--version"], r"version \S+"
            ),
        },
    }


# --------------------------------------------------------------------------- 1. build


def bench_build(cfg: Config, work: Path) -> list[Result]:
    """pvdesc build (command; in-process own vs iasl) against dtc + iasl on its outputs."""
    if cfg.quick:
        desc = work / "large-vm.yaml"
        desc.write_text(inputs.large_vm_yaml(cfg.vcpus, cfg.banks, cfg.devices))
    else:
        desc = inputs.LARGE_VM
    size = f"{cfg.vcpus} vCPUs, {cfg.banks} NUMA banks, {cfg.devices} devices"
    cli = timed_command(
        [*pvdesc_cmd(), "build", str(desc), "-o", str(work / "build-cli"), "-q"], cfg.repeats
    )

    # What every fresh 'pvdesc build' pays before doing any work.
    interpreter = timed_command([sys.executable, "-c", "pass"], cfg.repeats)
    imports = timed_command(
        [sys.executable, "-c", "import pvdesc.commands.cli, pvdesc.emit.build"], cfg.repeats
    )

    out = work / "build"
    total, own, iasl_in = Timing(), Timing(), Timing()
    runs = 0

    def once() -> None:
        nonlocal runs
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = time.process_time()
        with acpica.timing() as times:
            start = time.perf_counter()
            build.build(desc, out)
            wall = time.perf_counter() - start
        own_cpu = time.process_time() - cpu
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        kids_cpu = (after.ru_utime + after.ru_stime) - (kids.ru_utime + kids.ru_stime)
        total.wall.append(wall)
        total.cpu.append(own_cpu + kids_cpu)
        iasl_in.wall.append(times.total)
        iasl_in.cpu.append(kids_cpu)
        own.wall.append(wall - times.total)
        own.cpu.append(own_cpu)
        runs = len(times.runs)

    once()  # warm-up: imports, template compilation
    total, own, iasl_in = Timing(), Timing(), Timing()
    for _ in range(cfg.repeats):
        once()

    name = build.plan(desc).layout.description.name
    dts = out / f"{name}.dts"
    dsl = sorted(out.glob(f"{name}.*.dsl"))
    dtc_t = timed_command(
        ["dtc", "-I", "dts", "-O", "dtb", "-o", str(work / "dtc.dtb"), str(dts)], cfg.repeats
    )
    iasl = acpica.tool("iasl")
    base = work / "iasl"
    base.mkdir(exist_ok=True)
    # pvdesc's own flags (acpica.compile_asl); the output prefix keeps the AML in ``base``.
    iasl_t = combine(
        [
            timed_command(
                [iasl, "-vs", "-vi", "-we", "-p", str(base / src.stem), str(src)], cfg.repeats
            )
            for src in dsl
        ]
    )
    baseline = combine([dtc_t, iasl_t])
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}

    def row(key: str, what: str, t: Timing, **detail: Any) -> Result:
        return Result(key, what, t.median, "s", cpu=t.cpu_median, detail={**t.to_json(), **detail})

    def ratio(key: str, what: str, t: Timing, note: str, limit: float | None = 1.5) -> Result:
        return Result(
            key,
            what,
            t.median / baseline.median,
            "x",
            cpu=t.cpu_median / baseline.cpu_median,
            limit=limit,
            note=note,
        )

    return [
        row("build.cli", f"pvdesc build, command ({size})", cli, outputs=files),
        row("build.interpreter", "  floor: python -c pass", interpreter),
        row(
            "build.imports",
            "  floor: python -c 'import pvdesc.commands.cli, pvdesc.emit.build'",
            imports,
        ),
        row("build.inprocess", "pvdesc build, in-process (imports done)", total),
        row("build.own", "  of which pvdesc working (iasl running alongside)", own),
        row("build.iasl", f"  of which waiting for iasl ({runs} runs)", iasl_in),
        row("baseline.dtc", "dtc -I dts -O dtb on its .dts", dtc_t),
        row(
            "baseline.iasl",
            f"iasl on its {len(dsl)} .dsl files",
            iasl_t,
            files=[p.name for p in dsl],
        ),
        ratio(
            "build.ratio_cli",
            "pvdesc build command / (dtc + iasl)",
            cli,
            "fresh process: interpreter start and imports included (see the floor row)",
            limit=3.0,
        ),
        ratio(
            "build.ratio_floor",
            "  floor for any Python command: (python -c pass + iasl) / (dtc + iasl)",
            combine([interpreter, iasl_t]),
            "what a command that starts Python and runs iasl costs before doing any work",
            limit=None,
        ),
        ratio(
            "build.ratio_inprocess",
            "pvdesc build in-process / (dtc + iasl)",
            total,
            "library call with imports already done",
        ),
    ]


# --------------------------------------------------------------------------- 2. check


def qemu_dtb(cfg: Config, path: Path) -> str | None:
    """Dump QEMU virt's DTB to ``path``; ``None`` or the reason it could not."""
    qemu = find_program("qemu-system-aarch64")
    if qemu is None:
        return "qemu-system-aarch64 not found"
    smp = 8 if cfg.quick else 512
    argv = [
        qemu,
        "-machine",
        f"virt,gic-version=3,dumpdtb={path}",
        "-cpu",
        "max",
        "-smp",
        str(smp),
        "-m",
        "4G",
        "-nic",
        "none",
        "-nographic",
    ]
    try:
        run(argv)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return f"QEMU could not dump its DTB: {exc}"
    return None if path.is_file() else "QEMU wrote no DTB"


def _check_argv(path: Path, vcpus: int) -> list[str]:
    return [*pvdesc_cmd(), "check", "--dtb", str(path), "--region", REGION, "--vcpus", str(vcpus)]


def _sweep_all(ranges: Sequence[Range]) -> int:
    """Every overlapping pair of ``ranges`` with itself (each range overlaps itself)."""
    return sum(1 for _ in sweep_overlaps(ranges, ranges))


def bench_check(cfg: Config, work: Path) -> list[Result]:
    out: list[Result] = []
    qpath = work / "qemu-virt.dtb"
    why = qemu_dtb(cfg, qpath)
    label = "pvdesc check, QEMU virt dumpdtb"
    if why is not None:
        out.append(Result("check.qemu_dtb", label, None, "s", limit=0.150, note=f"skipped: {why}"))
        out.append(
            Result("check.ratio_bare", "  / python -c pass", None, "x", note=f"skipped: {why}")
        )
    else:
        blob = qpath.read_bytes()
        tree = dtb.parse(blob, str(qpath))
        used = int.from_bytes(blob[12:16], "big") + int.from_bytes(blob[32:36], "big")
        t, bare, wall_ratio, cpu_ratio = paired(
            _check_argv(qpath, 8 if cfg.quick else 512), [sys.executable, "-c", "pass"], cfg.repeats
        )
        out.append(
            Result(
                "check.qemu_dtb",
                f"{label} ({len(blob) // 1024} KiB file, {used // 1024} KiB used, "
                f"{tree.node_count} nodes)",
                t.median,
                "s",
                cpu=t.cpu_median,
                limit=0.150,
                detail={
                    **t.to_json(),
                    "file_bytes": len(blob),
                    "totalsize": int.from_bytes(blob[4:8], "big"),
                    "strings_end": used,
                    "nodes": tree.node_count,
                },
            )
        )
        out.append(
            Result(
                "check.ratio_bare",
                "  / python -c pass, run in turn (pair by pair)",
                statistics.median(wall_ratio),
                "x",
                cpu=statistics.median(cpu_ratio) if cpu_ratio else None,
                limit=2.0,
                note=f"python -c pass: median {bare.median * 1000:.1f} ms wall, "
                f"{bare.cpu_median * 1000:.1f} ms cpu",
                detail={"bare": bare.to_json(), "wall_ratios": wall_ratio, "cpu_ratios": cpu_ratio},
            )
        )
    blob = inputs.nested_dtb(cfg.buses, 99)
    npath = work / "nested.dtb"
    npath.write_bytes(blob)
    nodes = dtb.parse(blob, str(npath)).node_count
    t = timed_command(_check_argv(npath, 512), cfg.repeats)
    out.append(
        Result(
            "check.nodes_10k",
            f"pvdesc check, generated DTB, {nodes} nodes",
            t.median,
            "s",
            cpu=t.cpu_median,
            limit=0.5,
            detail={**t.to_json(), "bytes": len(blob), "nodes": nodes},
        )
    )
    sweeps: dict[int, Timing] = {}
    for key, n, limit in (
        ("sweep.small", cfg.sweep_small, None),
        ("sweep.large", cfg.sweep_large, 1.0),
    ):
        ranges = inputs.random_ranges(n)
        pairs = _sweep_all(ranges)
        reps = cfg.repeats if n == cfg.sweep_small else cfg.slow_repeats
        t = samples(functools.partial(_sweep_all, ranges), reps)
        sweeps[n] = t
        out.append(
            Result(
                key,
                f"overlap sweep, {n:,} x {n:,} ranges (in-process)",
                t.median,
                "s",
                cpu=t.cpu_median,
                limit=limit,
                detail={**t.to_json(), "ranges": n, "overlapping_pairs": pairs},
            )
        )
    small, large = cfg.sweep_small, cfg.sweep_large
    nlogn = (large * math.log(large)) / (small * math.log(small))
    quadratic = (large / small) ** 2
    out.append(
        Result(
            "sweep.growth",
            f"sweep growth {small // 1000}k -> {large // 1000}k "
            f"(n log n: {nlogn:.1f}, n^2: {quadratic:.0f})",
            sweeps[large].median / sweeps[small].median,
            "x",
            cpu=sweeps[large].cpu_median / sweeps[small].cpu_median,
            limit=2 * nlogn,
            note=f"n log n predicts {nlogn:.1f}, n^2 {quadratic:.0f}; target: within 2x of n log n",
            detail={"nlogn_prediction": nlogn, "quadratic_prediction": quadratic},
        )
    )
    return out


# --------------------------------------------------------------------------- 3. start


def bench_version(cfg: Config) -> list[Result]:
    t = timed_command([*pvdesc_cmd(), "--version"], cfg.repeats)
    text = run([sys.executable, "-X", "importtime", "-m", "pvdesc", "--version"])
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", text, re.M))
    heavy = sorted(m for m in HEAVY_MODULES if m in imported)
    return [
        Result(
            "version.cold_start",
            "pvdesc --version, cold start",
            t.median,
            "s",
            cpu=t.cpu_median,
            limit=0.100,
            note="heavy modules imported: " + (", ".join(heavy) if heavy else "none"),
            detail={**t.to_json(), "heavy_imported": heavy, "modules_imported": len(imported)},
        )
    ]


# --------------------------------------------------------------------------- 4. validate


def bench_validate(cfg: Config) -> list[Result]:
    """``pvdesc validate examples/`` (default options) with one and two worker processes."""
    cmd = pvdesc_cmd()
    # --quick: one small example, so the smoke test stays fast.
    target = "examples/generic-hole.yaml" if cfg.quick else "examples/"
    keys = (("validate.jobs1", 1), ("validate.jobs2", 2))
    try:
        run([*cmd, "validate", "--help"])
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return [
            Result(k, f"pvdesc validate {target} --jobs {j}", None, "s",
                   note="skipped: pvdesc validate not available")
            for k, j in keys
        ]  # fmt: skip
    files = len(list((ROOT / "examples").glob("*.yaml"))) if not cfg.quick else 1
    out = []
    for key, jobs in keys:
        t = timed_command(
            [*cmd, "validate", target, "--jobs", str(jobs)], cfg.validate_repeats, cwd=ROOT
        )
        out.append(
            Result(
                key,
                f"pvdesc validate {target} --jobs {jobs} ({files} descriptions)",
                t.median,
                "s",
                cpu=t.cpu_median,
                detail={**t.to_json(), "descriptions": files},
            )
        )
    return out


def bench_fleet(cfg: Config, work: Path) -> list[Result]:
    """``pvdesc validate`` over a generated fleet, every external validator, and without."""
    fleet = work / "fleet"
    inputs.fleet(fleet, cfg.fleet)
    cmd = pvdesc_cmd()
    out = []
    for key, flag, limit in (
        ("fleet.external", "--external", 20.0),
        ("fleet.no_external", "--no-external", None),
    ):
        t = timed_command(
            [*cmd, "validate", str(fleet), "--jobs", "2", flag], cfg.fleet_repeats, cwd=work
        )
        out.append(
            Result(
                key,
                f"pvdesc validate, fleet of {cfg.fleet:,} descriptions, --jobs 2 {flag}",
                t.median,
                "s",
                cpu=t.cpu_median,
                limit=limit,
                detail={**t.to_json(), "descriptions": cfg.fleet},
            )
        )
    return out


# --------------------------------------------------------------------------- 5. yaml


def bench_yaml(cfg: Config) -> list[Result]:
    """In-process :func:`pvdesc.description.load.loads` of hostile inputs (imports done)."""
    from pvdesc.description import load as description
    from pvdesc.errors import PvdescError

    def answer(text: bytes) -> str:
        try:
            description.loads(text, "hostile.yaml")
        except PvdescError as err:
            return str(err)
        return "accepted"

    limit = description.MAX_FILE_BYTES // (64 if cfg.quick else 1)
    cases = {"large_vm": inputs.LARGE_VM.read_bytes(), **inputs.hostile_yaml(limit)}
    answer(cases["too_many_banks"])  # jsonschema's import and the validator, once
    out = []
    for name, text in cases.items():
        t = samples(functools.partial(answer, text), cfg.slow_repeats)
        hostile = name != "large_vm"
        out.append(
            Result(
                f"yaml.{name}",
                f"load {name.replace('_', ' ')} ({len(text) / 1024:.0f} KiB)",
                t.median,
                "s",
                cpu=t.cpu_median,
                limit=YAML_LIMIT if hostile else None,
                note=answer(text)[:160] if hostile else "",
                detail={**t.to_json(), "bytes": len(text), "asserted": hostile},
            )
        )
    return out


# --------------------------------------------------------------------------- report


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value * 1000:.1f} ms"


def fmt_target(r: Result) -> str:
    if r.limit is None:
        return ""
    if r.unit == "x":
        return f"<= {r.limit:.3g}x"
    return f"<= {r.limit * 1000:g} ms"


def table(results: Sequence[Result], mach: dict[str, Any], cfg: Config) -> str:
    tools = ", ".join(f"{k} {v}" for k, v in mach["tools"].items() if v)
    load = mach.get("loadavg")
    head = [
        f"pvdesc {mach['pvdesc']} ({mach['commit'] or 'no git'}) on {mach['cpu']}, "
        f"{mach['cores']} cores, Python {mach['python']}",
        tools,
        "quick mode, 1 run, small inputs: the figures mean nothing"
        if cfg.quick
        else f"median of {cfg.repeats} runs ({cfg.slow_repeats} for the 100k sweep, "
        f"{cfg.validate_repeats} for validate, {cfg.fleet_repeats} for the fleet), "
        "after one warm-up run; wall time (cpu: user+sys, children included)"
        + (f"; load average at start {load[0]:.2f}" if load else ""),
        "",
    ]
    rows = [("what", "median", "cpu", "target", "result")]
    rows += [
        (r.what, fmt(r.value, r.unit), fmt(r.cpu, r.unit), fmt_target(r), r.status) for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = head[:]
    for i, row in enumerate(rows):
        cells = [f"{row[0]:<{widths[0]}}", f"{row[1]:>{widths[1]}}", f"{row[2]:>{widths[2]}}"]
        cells += [f"{row[3]:<{widths[3]}}", row[4]]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"{r.key}: {r.note}" for r in results if r.note]
    if notes:
        lines.append("")
        lines += notes
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run, small inputs (smoke test)")
    parser.add_argument("--repeats", type=int, help="timed runs per figure (default 21)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument(
        "--only",
        metavar="PARTS",
        help=f"comma-separated subset of {','.join(PARTS)} (default: all)",
    )
    args = parser.parse_args(argv)
    parts = PARTS if args.only is None else tuple(p.strip() for p in args.only.split(","))
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(
            f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}"
        )
    repeats = args.repeats or (1 if args.quick else 21)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    cfg = Config(args.quick, repeats, 1 if args.quick else max(1, min(repeats, 7)))
    # As pip does on install: no timed process compiles pvdesc's modules from source.
    run([sys.executable, "-m", "compileall", "-q", str(Path(pvdesc.__file__).parent)])
    mach = machine()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pvdesc-bench-") as tmp:
        work = Path(tmp)
        if "build" in parts:
            results += bench_build(cfg, work)
        if "check" in parts:
            results += bench_check(cfg, work)
    if "version" in parts:
        results += bench_version(cfg)
    if "validate" in parts:
        results += bench_validate(cfg)
    if "fleet" in parts:
        with tempfile.TemporaryDirectory(prefix="pvdesc-bench-fleet-") as tmp:
            results += bench_fleet(cfg, Path(tmp))
    if "yaml" in parts:
        results += bench_yaml(cfg)
    mach["loadavg_end"] = list(os.getloadavg())
    sys.stdout.write(table(results, mach, cfg))
    doc = {
        "format": FORMAT,
        "mode": "quick" if cfg.quick else "full",
        "repeats": cfg.repeats,
        "machine": mach,
        "results": {r.key: r.to_json() for r in results},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    missed = [r.key for r in results if r.detail.get("asserted") and r.status == "miss"]
    if missed and not cfg.quick:
        print(f"missed asserted targets: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
