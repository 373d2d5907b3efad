"""Long fuzz runs (not a test): the targets of tests/fuzzing.py under atheris or hypothesis.

Run::

    .venv/bin/python bench/fuzz.py --seconds 3600                # atheris, every target
    .venv/bin/python bench/fuzz.py --engine hypothesis --scale 50  # test_fuzz.py x50

atheris (libFuzzer, coverage-guided over pvdesc's bytecode) runs each target in
its own process for an equal share of the time, from a seed corpus of real
inputs (the DTBs pvdesc emits, QEMU's dumpdtb DTBs, dtc-compiled trees, the
examples and refused descriptions, hypervisor configs, SSDT/SRAT AML); DTB
targets also get pvdesc's libfdt structure mutations as a custom mutator.  A
target's failure (any exception but a clean refusal, or a wrong answer) is
recorded, not fatal: the input goes to ``--crashes`` (one file per distinct
failure site) and fuzzing goes on.  The hypothesis engine runs
tests/integration/test_fuzz.py with ``PVDESC_FUZZ_EXAMPLES`` scaled.

Prints, per target, the inputs tried, the failures and the distinct failure
sites, then the totals.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

#: Targets whose inputs are DTBs (they also get libfdt structure mutations).
DTB_TARGETS = ("dtb", "into")
ALL_TARGETS = ("dtb", "into", "yaml", "config", "acpi", "diff")
MAX_LEN = {"dtb": 65536, "into": 65536, "yaml": 16384, "config": 16384, "acpi": 8192}
#: The hypothesis engine's tests (their ``@fuzz_settings(N)`` example counts are scaled).
TEST_FUZZ = ROOT / "tests" / "integration" / "test_fuzz.py"


def seeds(target: str, work: Path) -> list[bytes]:
    """Real inputs to start from (packed DTBs: QEMU pads its dumps to 1 MiB)."""
    import libfdt
    from fuzzing import (
        DIFF_SEPARATOR,
        acpi_seeds,
        config_seeds,
        dtc_seeds,
        pvdesc_outputs,
        qemu_seeds,
        yaml_seeds,
    )

    if target in DTB_TARGETS:
        out = []
        for blob in pvdesc_outputs("dtb") + dtc_seeds(work) + qemu_seeds(work):
            fdt = libfdt.Fdt(bytearray(blob))
            fdt.pack()
            out.append(bytes(fdt.as_bytearray()))
        return out
    if target == "yaml":
        return list(yaml_seeds())
    if target == "config":
        return list(config_seeds())
    if target == "acpi":
        return list(acpi_seeds())
    pool = config_seeds() + yaml_seeds()
    rng = random.Random(0)
    return [rng.choice(pool) + DIFF_SEPARATOR + rng.choice(pool) for _ in range(40)]


def random_fdt_ops(rng: random.Random) -> list[tuple[object, ...]]:
    """A few structure mutations like tests/mutators.py's ``fdt_ops``, from a plain RNG."""
    from mutators import INTERESTING_U32, NODE_NAMES, PROP_NAMES

    def value() -> bytes:
        if rng.random() < 0.5:
            n = rng.randrange(0, 12)
            cells = [rng.choice(INTERESTING_U32) if rng.random() < 0.7 else rng.getrandbits(32)
                     for _ in range(n)]  # fmt: skip
            return b"".join(c.to_bytes(4, "big") for c in cells)
        return rng.choice([b"", b"memory\0", b"okay\0", b"disabled\0", rng.randbytes(8)])

    ops: list[tuple[object, ...]] = []
    for _ in range(rng.randrange(1, 5)):
        kind = rng.choice(["setprop", "setprop", "addnode", "delnode", "delprop", "deep", "wide"])
        node = rng.randrange(1 << 16)
        if kind == "setprop":
            ops.append((kind, node, rng.choice(PROP_NAMES), value()))
        elif kind in ("addnode",):
            ops.append((kind, node, rng.choice(NODE_NAMES)))
        elif kind == "delnode":
            ops.append((kind, node))
        elif kind == "delprop":
            ops.append((kind, node, rng.choice(PROP_NAMES)))
        elif kind == "deep":
            ops.append((kind, node, rng.choice([2, 10, 70])))
        else:
            ops.append((kind, node, rng.choice([2, 20, 200]), value()))
    return ops


def worker(target: str, seconds: int, runs: int, seed: int, crashes: Path, corpus: Path) -> None:
    """One atheris process: fuzz ``target``, record failures, never stop at one."""
    import atheris

    with atheris.instrument_imports(include=["pvdesc"]):
        import fuzzing
        import mutators

    crashes.mkdir(parents=True, exist_ok=True)
    stats = {"failures": 0}
    fn = fuzzing.TARGETS[target]

    def one_input(data: bytes) -> None:
        try:
            fn(data)
        except Exception as exc:  # recorded, not fatal: keep fuzzing
            stats["failures"] += 1
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            site = f"{type(exc).__name__}@{Path(frame.filename).name}:{frame.lineno}"
            key = hashlib.sha256(site.encode()).hexdigest()[:10]
            path = crashes / f"{target}-{key}.bin"
            if not path.exists():
                path.write_bytes(data)
                (crashes / f"{target}-{key}.txt").write_text(f"{site}\n{exc!r}\n")
            (crashes / f"{target}.count").write_text(str(stats["failures"]))

    def mutator(data: bytes, max_size: int, mseed: int) -> bytes:
        rng = random.Random(mseed)
        if target in DTB_TARGETS and rng.random() < 0.4:
            out = mutators.apply_fdt(data, random_fdt_ops(rng))
            return out if len(out) <= max_size else data[:max_size]
        result: bytes = atheris.Mutate(data, max_size)
        return result

    args = [
        sys.argv[0],
        str(corpus),
        f"-max_len={MAX_LEN.get(target, 65536)}",
        f"-seed={seed}",
        "-timeout=60",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
    ]
    args.append(f"-runs={runs}" if runs else f"-max_total_time={seconds}")
    atheris.Setup(args, one_input, custom_mutator=mutator)
    atheris.Fuzz()


def run_atheris(targets: list[str], seconds: int, runs: int, seed: int, crashes: Path) -> int:
    share = max(1, seconds // len(targets))
    total_runs = total_fail = 0
    sites: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="pvdesc-fuzz-") as tmp:
        for target in targets:
            corpus = Path(tmp) / f"corpus-{target}"
            corpus.mkdir()
            for i, blob in enumerate(seeds(target, Path(tmp))):
                (corpus / f"seed-{i}").write_bytes(blob)
            start = time.monotonic()
            cmd = [sys.executable, __file__, "--worker", target, "--seconds", str(share),
                   "--runs", str(runs), "--seed", str(seed), "--crashes", str(crashes),
                   "--corpus", str(corpus)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            elapsed = time.monotonic() - start
            done = re.findall(r"^Done (\d+) runs", proc.stderr, re.MULTILINE)
            if not done:
                sys.stderr.write(proc.stderr[-3000:])
                print(f"{target}: the atheris worker failed (exit {proc.returncode})")
                return 2
            tried = int(done[-1])
            count_file = crashes / f"{target}.count"
            failures = int(count_file.read_text()) if count_file.exists() else 0
            found = sorted(p.stem for p in crashes.glob(f"{target}-*.bin"))
            sites.update(found)
            total_runs += tried
            total_fail += failures
            print(
                f"{target:7s} inputs tried {tried:>9}  failures {failures:>5}  "
                f"distinct sites {len(found):>3}  ({elapsed:.0f} s)",
                flush=True,
            )
    print(f"total   inputs tried {total_runs:>9}  failures {total_fail:>5}  "
          f"distinct sites {len(sites):>3}")  # fmt: skip
    print(json.dumps({"engine": "atheris", "inputs": total_runs, "failures": total_fail,
                      "sites": sorted(sites)}))  # fmt: skip
    return 1 if total_fail else 0


def run_hypothesis(scale: float, crashes: Path) -> int:
    env = dict(os.environ, PVDESC_FUZZ_EXAMPLES=str(scale), PVDESC_FUZZ_CRASHES=str(crashes))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEST_FUZZ)]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    # TEST_FUZZ's example counts, scaled (each example is one input).
    counts = [int(n) for n in re.findall(r"@fuzz_settings\((\d+)\)", TEST_FUZZ.read_text())]
    tried = sum(max(1, int(n * scale)) for n in counts)
    failed = sorted(p.name for p in crashes.glob("*.bin")) if proc.returncode else []
    print(f"hypothesis: about {tried} inputs in {time.monotonic() - start:.0f} s, "
          f"pytest exit {proc.returncode}, failing inputs saved: {len(failed)}")  # fmt: skip
    return proc.returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engine", choices=["atheris", "hypothesis"], default="atheris")
    p.add_argument("--seconds", type=int, default=600, help="total time (atheris)")
    p.add_argument("--runs", type=int, default=0, help="inputs per target instead of a time")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=float, default=20.0, help="example multiplier (hypothesis)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS))
    p.add_argument("--crashes", type=Path, default=ROOT / ".fuzz-crashes")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.seconds, args.runs, args.seed, args.crashes, args.corpus)
        return 0
    if args.engine == "hypothesis":
        return run_hypothesis(args.scale, args.crashes)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(ALL_TARGETS)
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return run_atheris(targets, args.seconds, args.runs, args.seed, args.crashes)


if __name__ == "__main__":
    sys.exit(main())
