"""The brief commands (build, check) run without the cyclic garbage collector, and give it back."""

from __future__ import annotations

import argparse
import gc

import pytest

from pvdesc.commands import cli, handlers
from pvdesc.errors import PvdescError

ARGS = {
    "build": ["build", "x.yaml", "-o", "out"],
    "check": ["check", "--dtb", "x.dtb", "--region", "0x1000:64K", "--vcpus", "1"],
    "profiles": ["profiles"],
    "diff": ["diff", "a.json", "b.json"],
}


@pytest.mark.parametrize(
    ("command", "paused"),
    [*((c, True) for c in cli.BRIEF_COMMANDS), ("profiles", False), ("diff", False)],
)
@pytest.mark.parametrize("fails", [False, True])
def test_collector_paused_for_brief_commands_only(
    monkeypatch: pytest.MonkeyPatch, command: str, paused: bool, fails: bool
) -> None:
    seen: list[bool] = []

    def handler(_args: argparse.Namespace) -> int:
        seen.append(gc.isenabled())
        if fails:
            raise PvdescError("injected")
        return 0

    monkeypatch.setattr(handlers, f"cmd_{command}", handler)
    assert gc.isenabled()
    assert cli.main(ARGS[command]) == (2 if fails else 0)
    assert seen == [not paused]
    assert gc.isenabled()  # given back, whatever the command did


def test_a_caller_that_paused_it_keeps_it_paused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "cmd_profiles", lambda _args: 0)
    gc.disable()
    try:
        assert cli.main(ARGS["profiles"]) == 0
        monkeypatch.setattr(handlers, "cmd_build", lambda _args: 0)
        assert cli.main(ARGS["build"]) == 0
        assert not gc.isenabled()
    finally:
        gc.enable()
