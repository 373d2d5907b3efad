"""Benchmark (not a test): `pvdesc check` on a 10,000-node DTB and the sweep on 100k ranges.

Run: ``.venv/bin/python bench/check.py``.  Prints a small table of best-of-5 times.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from inputs import nested_dtb

from pvdesc.audit import check
from pvdesc.core.ranges import Range, sweep_overlaps
from pvdesc.read import dtb


def best(fn: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    blob = nested_dtb()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nested.dtb"
        path.write_bytes(blob)
        tree = dtb.parse(blob, str(path))
        target = check.target_from_region("0x090a0000:64K", 512)
        rows = [
            (f"dtb.parse ({tree.node_count} nodes, {len(blob)} B)", best(lambda: dtb.parse(blob))),
            ("check.check (512 vCPUs)", best(lambda: check.check(tree, target))),
            (
                "pvdesc check CLI (subprocess, incl. startup)",
                best(
                    lambda: subprocess.run(
                        [sys.executable, "-m", "pvdesc", "check", "--dtb", str(path),
                         "--region", "0x090a0000:64K", "--vcpus", "512"],
                        check=True, capture_output=True,
                    )
                ),
            ),
        ]  # fmt: skip
    rng = random.Random(1)
    ranges = [Range(rng.randrange(1 << 40), rng.randrange(1, 1 << 20)) for _ in range(100_000)]
    structs = [Range(0x090A0000 + 64 * i, 64) for i in range(512)]
    rows.append(
        (
            "sweep_overlaps 512 x 100k ranges",
            best(lambda: list(sweep_overlaps(structs, ranges))),
        )
    )
    rows.append(
        (
            "sweep_overlaps 100k x 100k ranges",
            best(lambda: list(sweep_overlaps(ranges, ranges)), 3),
        )
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  best time")
    for name, secs in rows:
        print(f"{name:<{width}}  {secs * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
