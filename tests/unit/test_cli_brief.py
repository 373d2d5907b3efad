"""The brief commands (build, check): no cyclic garbage collector while they run, no teardown after.

They run without the collector and give it back; the ``pvdesc`` program then exits without the
interpreter's teardown, after the exit handlers and with every byte of output flushed.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import EXAMPLES, ROOT

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


#: ``pvdesc ARGS`` through :func:`cli.entry`, with an exit handler and an object whose
#: finalizer runs only when the interpreter tears down (a brief command skips that).
PROGRAM = """
import atexit, sys
class Teardown:
    def __del__(self):
        sys.stderr.write("teardown\\n")
keep = Teardown()
atexit.register(lambda: sys.stderr.write("exit handler\\n"))
sys.argv = ["pvdesc", *sys.argv[1:]]
from pvdesc.commands.cli import entry
entry()
"""


def program(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_brief_command_exits_without_teardown_after_its_output(tmp_path: Path) -> None:
    desc = str(EXAMPLES / "numa-4node-acpi.yaml")
    res = program("build", desc, "-o", str(tmp_path / "out"))
    assert res.returncode == 0
    assert res.stderr == "exit handler\n"  # the handlers ran; no teardown followed
    lines = res.stdout.splitlines()
    assert len(lines) > 10 and lines[-1].endswith("numa-4node-acpi.manifest.json")  # every byte
    res = program("build", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "out"))
    assert res.returncode == 2
    assert res.stderr.startswith("pvdesc: error: ") and res.stderr.endswith("\nexit handler\n")


def test_other_commands_tear_down_as_usual() -> None:
    res = program("profiles")
    assert res.returncode == 0 and "qemu-virt" in res.stdout
    assert res.stderr == "exit handler\nteardown\n"
