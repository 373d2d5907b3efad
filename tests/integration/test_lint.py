"""ruff and mypy (strict) are part of the suite: a lint or type error fails CI."""

from __future__ import annotations

import sys

from helpers import ROOT, run


def test_ruff_clean() -> None:
    targets = [d for d in ("pvdesc", "tests", "bench") if (ROOT / d).is_dir()]
    res = run([sys.executable, "-m", "ruff", "check", *targets], cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_clean() -> None:
    res = run([sys.executable, "-m", "mypy"], cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    # Strict over the package, the benchmarks and the tests themselves: every .py file.
    files = sum(1 for d in ("pvdesc", "bench", "tests") for _ in (ROOT / d).rglob("*.py"))
    assert res.stdout.endswith(f" in {files} source files\n"), res.stdout
