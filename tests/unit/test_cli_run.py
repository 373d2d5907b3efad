"""pvdesc.commands.cli.run: the program's entry; only ``check`` freezes the collector at exit."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
from helpers import EXAMPLES, cli_subprocess

from pvdesc.commands import cli
from pvdesc.emit import build


@pytest.mark.parametrize(("words", "frozen"), [(["check", "--x"], 1), (["profiles"], 0)])
def test_run_returns_main_status_and_freezes_only_after_check(
    monkeypatch: pytest.MonkeyPatch, words: list[str], frozen: int
) -> None:
    calls: list[list[str]] = []
    freezes: list[None] = []

    def main(argv: list[str]) -> int:
        calls.append(list(argv))
        return 7

    monkeypatch.setattr(sys, "argv", ["pvdesc", *words])
    monkeypatch.setattr(cli, "main", main)
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(None))
    assert cli.run() == 7
    assert calls == [words]
    assert len(freezes) == frozen


def test_check_program_exit_statuses(tmp_path: Path) -> None:
    """Through ``python -m pvdesc`` (run): 0 safe, 1 unsafe, 2 unusable, output complete."""
    result = build.build(EXAMPLES / "qemu-virt.yaml", tmp_path)
    dtb = str(tmp_path / next(o.name for o in result.outputs if o.kind == "dtb"))
    safe = cli_subprocess("check", "--dtb", dtb, "--region", "0x090a0000:64K", "--vcpus", "4")
    assert (safe.returncode, safe.stdout.splitlines()[-1]) == (0, "verdict: safe")
    unsafe = cli_subprocess("check", "--dtb", dtb, "--region", "0x40000000:64K", "--vcpus", "4")
    assert (unsafe.returncode, unsafe.stdout.splitlines()[-1]) == (1, "verdict: unsafe")
    bad = cli_subprocess(
        "check", "--dtb", str(tmp_path / "none"), "--region", "1:1", "--vcpus", "1"
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stdout == ""
