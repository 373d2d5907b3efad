"""The benchmark harness: what a figure is, the run's settings, timing commands and the machine.

Used by :mod:`figures` (each benchmark) and :mod:`suite` (the run and its report).
"""

from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pvdesc
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


def hookless_venv(where: Path) -> tuple[str, list[str]]:
    """A venv that imports this pvdesc as a regular (wheel) install would: ``(python, pvdesc)``.

    ``scripts/setup`` installs pvdesc editable, and setuptools' editable install of this
    layout (``templates/`` packaged as ``pvdesc.templates``) is an import hook that
    every Python of the venv loads at start-up: pathlib, re, urllib.parse, ipaddress
    and importlib.util, about 13 ms before ``python -c pass`` does anything.  That
    makes the venv's ``python -c pass`` a slower floor than a regular install's.  This
    venv puts the source tree and the first venv's site-packages on ``sys.path``
    with a plain ``.pth`` (static paths, as a wheel's site-packages is; ``.pth`` files
    inside them are not run), and has the first venv's own ``pvdesc`` script.
    """
    import sysconfig
    import venv

    if not (where / "bin" / "python").exists():
        venv.create(where, with_pip=False, symlinks=True)
    python = str(where / "bin" / "python")
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    Path(purelib.strip(), "pvdesc-source.pth").write_text(
        f"{ROOT}\n{sysconfig.get_paths()['purelib']}\n"
    )
    script = Path(pvdesc_cmd()[0])
    if script.name != "pvdesc":  # no entry point: python -m pvdesc, as pvdesc_cmd does
        return python, [python, "-m", "pvdesc"]
    lines = script.read_text().splitlines()
    launcher = where / "bin" / "pvdesc"
    launcher.write_text("\n".join([f"#!{python}", *lines[1:]]) + "\n")
    launcher.chmod(0o755)
    return python, [str(launcher)]


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
