"""``pvdesc ... | head``: a reader that goes away ends pvdesc quietly, as SIGPIPE ends a C tool;
stdout on a full disk is one line and exit 2."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest
from helpers import EXAMPLES, SCRIPT

from pvdesc.emit import build

#: 128 + SIGPIPE: what a shell reports for a tool that SIGPIPE killed.
EXIT_SIGPIPE = 141


def _wide_description(path: Path, devices: int) -> Path:
    lines = ["name: wide", "vcpus: 4", "boot: linux-dt", "memory:"]
    lines += ["  - {base: 0x40000000, size: 1G}", "devices:"]
    lines += [
        f"  - {{name: dev{d}, base: {0x1000_0000 + d * 0x1_0000:#x}, size: 4K}}"
        for d in range(devices)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_closed_stdout_exits_141_without_traceback(tmp_path: Path, unbuffered: bool) -> None:
    """Also with PYTHONUNBUFFERED, where CPython's TextIOWrapper drops what a short write
    leaves over, so without handlers.write the output was cut short and pvdesc exited 0."""
    assert SCRIPT.is_file(), f"no console script at {SCRIPT}: run scripts/setup --test"
    desc = _wide_description(tmp_path / "wide.yaml", devices=2000)
    argv = [str(SCRIPT), "map", "--color", "never", str(desc)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    full = subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        # More than the pipe holds, so pvdesc is still writing when the reader goes away.
        assert len(full.stdout) > 2 * fcntl.fcntl(proc.stdout.fileno(), fcntl.F_GETPIPE_SZ)
        assert proc.stdout.readline().startswith(b"wide ")
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert err == b""
    assert code == EXIT_SIGPIPE


@pytest.mark.parametrize(
    "words",
    [
        ["check", "--dtb", "DTB", "--region", "0x090a0000:64K", "--vcpus", "4"],
        ["build", "EXAMPLE", "--only", "dts", "-o", "-"],
        ["profiles"],
        ["map", "--color", "never", "EXAMPLE"],
    ],
    ids=["check", "build-only", "profiles", "map"],
)
def test_full_stdout_is_one_line_and_exit_2(tmp_path: Path, words: list[str]) -> None:
    """stdout on a full disk (/dev/full): one line naming standard output, exit 2, no traceback."""
    example = EXAMPLES / "qemu-virt.yaml"
    build.build(example, tmp_path / "out")
    dtb = next(tmp_path.joinpath("out").glob("*.dtb"))
    argv = [
        str(SCRIPT),
        *(str(dtb) if w == "DTB" else str(example) if w == "EXAMPLE" else w for w in words),
    ]
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, timeout=120, check=False)
    assert proc.stderr.decode() == (
        "pvdesc: error: standard output: cannot write: No space left on device\n"
    )
    assert proc.returncode == 2
