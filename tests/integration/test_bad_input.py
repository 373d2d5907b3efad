"""Every refusal: one exact line naming file:line:column, exit 2, no traceback, nothing written.

The corpus lives in tests/data/bad/: ``X.yaml`` and its expected stderr ``X.expected``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT, cli_subprocess

BAD = sorted((ROOT / "tests" / "data" / "bad").glob("*.yaml"))


def test_corpus_is_large() -> None:
    assert len(BAD) >= 25


@pytest.mark.parametrize("case", BAD, ids=lambda p: p.stem)
def test_refusal(case: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rel = case.relative_to(ROOT)
    res = cli_subprocess("build", str(rel), "-o", str(out))
    expected = case.with_suffix(".expected").read_text()
    assert res.returncode == 2
    assert res.stderr == expected
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stdout == ""
    assert not out.exists(), "an output directory was created for a refused description"


def test_refusal_leaves_existing_outputs_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    good = ROOT / "examples" / "generic-hole.yaml"
    assert cli_subprocess("build", str(good), "-o", str(out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".pvdesc"}
    store = sorted(str(p.relative_to(out)) for p in (out / ".pvdesc").rglob("*"))
    bad = tmp_path / "generic-hole.yaml"
    bad.write_text(
        good.read_text().replace("placement: hole", "placement: carve\n  describe: none")
    )
    res = cli_subprocess("build", str(bad), "-o", str(out))
    assert res.returncode == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".pvdesc"} == before
    assert sorted(str(p.relative_to(out)) for p in (out / ".pvdesc").rglob("*")) == store


def test_missing_file_and_unwritable_output(tmp_path: Path) -> None:
    res = cli_subprocess("build", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "o"))
    assert res.returncode == 2
    assert (
        res.stderr
        == f"pvdesc: error: {tmp_path / 'nope.yaml'}: cannot read: No such file or directory\n"
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = cli_subprocess(
        "build", str(ROOT / "examples" / "generic-hole.yaml"), "-o", str(blocker / "o")
    )
    assert res.returncode == 2 and res.stderr.startswith(f"pvdesc: error: {blocker / 'o'}: ")
    assert res.stderr.count("\n") == 1


def test_usage_errors_exit_2() -> None:
    res = cli_subprocess("build")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    res = cli_subprocess("frobnicate")
    assert res.returncode == 2 and "Traceback" not in res.stderr
