"""`pvdesc check` as a program (`python -m pvdesc`, `cli.entry`): its exit statuses."""

from __future__ import annotations

from pathlib import Path

from helpers import EXAMPLES, cli_subprocess

from pvdesc.emit import build


def test_check_program_exit_statuses(tmp_path: Path) -> None:
    """Through ``python -m pvdesc`` (entry): 0 safe, 1 unsafe, 2 unusable, output complete."""
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
