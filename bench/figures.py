"""The benchmarks themselves, one function per part of ``bench/run`` (see :mod:`suite`).

Each returns its :class:`harness.Result` figures; the harness times, :mod:`suite` reports.
"""

from __future__ import annotations

import functools
import math
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import inputs
from harness import (
    HEAVY_MODULES,
    REGION,
    ROOT,
    YAML_LIMIT,
    Config,
    Result,
    Timing,
    combine,
    hookless_venv,
    paired,
    pvdesc_cmd,
    run,
    samples,
    timed_command,
)

from pvdesc.core.ranges import Range, sweep_overlaps
from pvdesc.emit import build
from pvdesc.read import dtb
from pvdesc.tools import acpica
from pvdesc.tools.proc import find_program

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

    # The same, where pvdesc is imported as from a regular install (harness.hookless_venv).
    plain_python, plain_pvdesc = hookless_venv(work / "hookless-venv")
    cli_plain = timed_command(
        [*plain_pvdesc, "build", str(desc), "-o", str(work / "build-cli-plain"), "-q"], cfg.repeats
    )
    interpreter_plain = timed_command([plain_python, "-c", "pass"], cfg.repeats)

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
        row(
            "build.cli_hookless",
            "pvdesc build, command, regular-install venv (no editable import hook)",
            cli_plain,
        ),
        row("build.interpreter_hookless", "  floor there: python -c pass", interpreter_plain),
        ratio(
            "build.ratio_cli_hookless",
            "  there / (dtc + iasl)",
            cli_plain,
            "the venv scripts/setup makes loads an editable-install import hook at every "
            "start; this venv imports pvdesc from static paths, as a wheel install does",
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


def _check_argv(path: Path, vcpus: int, pvdesc: Sequence[str] = ()) -> list[str]:
    """``pvdesc check`` of ``path``; ``pvdesc``: the command that runs it (default: the venv's)."""
    return [
        *(pvdesc or pvdesc_cmd()),
        "check",
        "--dtb",
        str(path),
        "--region",
        REGION,
        "--vcpus",
        str(vcpus),
    ]


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
        plain_python, plain_pvdesc = hookless_venv(work / "hookless-venv")
        t_plain, bare_plain, wall_plain, cpu_plain = paired(
            _check_argv(qpath, 8 if cfg.quick else 512, plain_pvdesc),
            [plain_python, "-c", "pass"],
            cfg.repeats,
        )
        out.append(
            Result(
                "check.ratio_bare_hookless",
                "  regular-install venv: check / its python -c pass (pair by pair)",
                statistics.median(wall_plain),
                "x",
                cpu=statistics.median(cpu_plain) if cpu_plain else None,
                note=f"check {t_plain.median * 1000:.1f} ms, python -c pass "
                f"{bare_plain.median * 1000:.1f} ms: without the editable install's import "
                "hook, whose 13 ms the floor above includes (harness.hookless_venv)",
                detail={
                    "check": t_plain.to_json(),
                    "bare": bare_plain.to_json(),
                    "wall_ratios": wall_plain,
                    "cpu_ratios": cpu_plain,
                },
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
    distinct = work / "fleet-distinct"
    inputs.fleet(distinct, cfg.fleet, distinct=True)
    cmd = pvdesc_cmd()
    out = []
    for key, folder, flag, limit, what in (
        ("fleet.external", fleet, "--external", 20.0, ""),
        ("fleet.no_external", fleet, "--no-external", None, ""),
        ("fleet.distinct", distinct, "--external", None, ", every ACPI table distinct"),
    ):
        t = timed_command(
            [*cmd, "validate", str(folder), "--jobs", "2", flag], cfg.fleet_repeats, cwd=work
        )
        out.append(
            Result(
                key,
                f"pvdesc validate, fleet of {cfg.fleet:,} descriptions{what}, --jobs 2 {flag}",
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
