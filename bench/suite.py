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

The benchmarks are in :mod:`figures`, the timing harness in :mod:`harness`; this module
runs the selected parts and writes the table and the JSON.

``--quick`` runs everything once on smaller inputs (to keep this script working;
its figures mean nothing).  Results go to a table on stdout and to JSON
(``bench/results.json`` or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from figures import bench_build, bench_check, bench_fleet, bench_validate, bench_version, bench_yaml
from harness import DEFAULT_JSON, FORMAT, PARTS, Config, Result, machine, run

import pvdesc

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
