"""Replay every input in tests/data/fuzz/: each once crashed pvdesc or got a wrong answer.

A file's prefix names the fuzz target (``yaml-``, ``dtb-``, ``into-``, ``config-``,
``acpi-``, ``diff-``).  Each input is replayed twice:

- through its target in :mod:`fuzzing`, with the target's correctness checks;
- through the CLI in a fresh interpreter, whose exit status and output must match
  ``NAME.expected``: ``exit N`` on the first line, then for exit 2 the exact
  one-line stderr, otherwise a line that stdout must contain.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzzing import CORPUS, DIFF_SEPARATOR, ROOT, TARGETS
from helpers import cli_subprocess

CASES = sorted(p for p in CORPUS.iterdir() if p.suffix != ".expected")
#: ``pvdesc check`` on corpus DTBs: a region inside the usual 0x40000000 + 1 GiB of RAM.
REGION = ("--region", "0x7fff0000:64K", "--vcpus", "4")


def _target(case: Path) -> str:
    return case.name.split("-", 1)[0]


def test_corpus_names_its_targets() -> None:
    assert {_target(c) for c in CASES} >= {"yaml", "dtb", "into", "config"}
    assert {_target(c) for c in CASES} <= set(TARGETS)
    for case in CASES:
        assert case.with_name(case.name + ".expected").is_file(), f"{case.name}: no .expected"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_target_answers_or_refuses_cleanly(case: Path) -> None:
    TARGETS[_target(case)](case.read_bytes())


@pytest.fixture(scope="module")
def base_dtb(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A DTB pvdesc built, for the config and ACPI cases (their errors never name it)."""
    out = tmp_path_factory.mktemp("base")
    assert (
        cli_subprocess("build", "-q", "examples/generic-hole.yaml", "-o", str(out)).returncode == 0
    )
    return str(out / "generic-hole.dtb")


def _argv(case: Path, tmp: Path, base: str) -> list[str]:
    rel = str(case.relative_to(ROOT))
    target = _target(case)
    if target == "yaml":
        return ["build", "-q", rel, "-o", str(tmp / "out")]
    if target == "dtb":
        return ["check", "--dtb", rel, *REGION]
    if target == "into":
        carve = "examples/linux-carve-reserved.yaml"
        return ["build", "-q", carve, "-o", str(tmp / "out"), "--into", rel]
    if target == "config":
        return ["check", "--dtb", base, "--hypervisor-config", rel]
    if target == "acpi":
        return [
            "check", "--dtb", base, *REGION,
            "--boot", "uefi-acpi", "--acpi", rel,
        ]  # fmt: skip
    old, _, new = case.read_bytes().partition(DIFF_SEPARATOR)
    paths = []
    for label, data in (("old", old), ("new", new)):
        path = tmp / (f"{label}.hypervisor.json" if data.lstrip()[:1] == b"{" else f"{label}.yaml")
        path.write_bytes(data)
        paths.append(path.name)
    return ["diff", *paths]


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_cli_replay(case: Path, tmp_path: Path, base_dtb: str) -> None:
    expected = case.with_name(case.name + ".expected").read_text().split("\n", 1)
    code = int(expected[0].removeprefix("exit "))
    detail = expected[1].rstrip("\n")
    cwd = tmp_path if _target(case) == "diff" else ROOT
    argv = _argv(case, tmp_path, base_dtb)
    res = cli_subprocess(*argv, cwd=cwd)
    assert "Traceback" not in res.stderr
    assert res.returncode == code, res.stdout + res.stderr
    if code == 2:
        assert res.stderr == detail + "\n"
        assert not (tmp_path / "out").exists(), "a refused build wrote outputs"
    else:
        assert detail in res.stdout
        assert res.stderr == ""
    if _target(case) == "dtb":  # pvdesc map --dtb reads the same tree
        drawn = cli_subprocess("map", *argv[1:], "--color", "never")
        assert drawn.returncode == code or (code < 2 and drawn.returncode < 2), drawn.stderr
        assert "Traceback" not in drawn.stderr and drawn.stderr.count("\n") <= 1
