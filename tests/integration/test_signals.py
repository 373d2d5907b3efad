"""SIGTERM, SIGHUP and SIGINT while a tool runs: its whole group dies, temporary folders go.

A fake, slow tool is placed first on ``PATH`` (``proc.find_program`` looks there
after the interpreter's own folder, which holds no iasl or QEMU).  It starts a
child of its own, writes both pids to a file and waits.  Once that file exists,
pvdesc gets the signal; it must then say one line, exit 128 + the signal, and
leave neither process running nor anything in its ``TMPDIR``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import EXAMPLES, ROOT

#: The fake tool: a child in its group, both pids written where the test reads them.
SLOW_TOOL = """#!/bin/sh
sleep 300 &
echo "$$ $!" > "$PVDESC_TEST_PIDS/.$$"
mv "$PVDESC_TEST_PIDS/.$$" "$PVDESC_TEST_PIDS/$$"
wait
"""


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def running(folder: Path) -> list[int]:
    """Processes running a program from ``folder`` (the fake tools)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or it ended
            continue
        if any(arg.startswith(f"{folder}/".encode()) for arg in argv):
            found.append(int(entry.name))
    return found


def interrupt_slow_tool(
    tmp: Path, tool: str, argv: list[str], sig: int, runs: int = 1
) -> tuple[int, str]:
    """Run ``pvdesc ARGV`` with a slow fake ``tool``, send ``sig`` once ``runs`` of it run.

    Returns (exit status, stderr) after checking that nothing is left behind.
    """
    fake = tmp / "bin"
    fake.mkdir()
    (fake / tool).write_text(SLOW_TOOL)
    (fake / tool).chmod(0o755)
    scratch = tmp / "tmpdir"
    scratch.mkdir()
    pids_dir = tmp / "pids"
    pids_dir.mkdir()
    env = {
        **os.environ,
        "PATH": f"{fake}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(scratch),
        "PVDESC_TEST_PIDS": str(pids_dir),
        "XDG_CACHE_HOME": str(tmp / "cache"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pvdesc", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        for _ in range(1200):  # the tools have started (or pvdesc ended first: a failure)
            if len(list(pids_dir.glob("[0-9]*"))) >= runs or proc.poll() is not None:
                break
            time.sleep(0.05)
        pids = [int(p) for f in pids_dir.glob("[0-9]*") for p in f.read_text().split()]
        assert len(pids) >= 2 * runs, f"the fake {tool} did not run {runs} times"
        assert all(alive(pid) for pid in pids)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # SIGKILL is delivered asynchronously: a killed process may take a moment to end.
    for _ in range(100):
        # the runs recorded, and any run of the fake started after them
        left = [pid for pid in {*pids, *running(fake)} if alive(pid)]
        if not left:
            break
        time.sleep(0.1)
    for pid in left:  # do not leave them to the next test, then fail
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"{tool} or its child still runs (pids {left} of {pids})"
    assert sorted(p.name for p in scratch.iterdir()) == [], "temporary files left behind"
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_during_iasl_kills_its_group_and_cleans_up(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out"
    desc = str(EXAMPLES / "uefi-acpi-hole.yaml")
    code, err = interrupt_slow_tool(tmp_path, "iasl", ["build", desc, "-o", str(out)], sig)
    name = signal.Signals(sig).name
    expected = "pvdesc: interrupted\n" if sig == signal.SIGINT else f"pvdesc: stopped by {name}\n"
    assert (code, err) == (128 + sig, expected)
    assert not out.exists()  # nothing published: iasl never finished


def test_sigterm_during_prove_kills_qemu_and_cleans_up(tmp_path: Path) -> None:
    guest = tmp_path / "cache" / "pvdesc" / "guest"
    guest.mkdir(parents=True)
    (guest / "busybox").write_bytes(b"not run: QEMU is a fake")
    (tmp_path / "vmlinuz").write_bytes(b"not run: QEMU is a fake")
    desc = str(EXAMPLES / "linux-carve-reserved.yaml")
    argv = ["prove", desc, "--kernel", str(tmp_path / "vmlinuz")]
    code, err = interrupt_slow_tool(tmp_path, "qemu-system-aarch64", argv, signal.SIGTERM)
    assert (code, err) == (143, "pvdesc: stopped by SIGTERM\n")


def test_sigterm_during_validate_stops_every_worker_and_tool(tmp_path: Path) -> None:
    """``validate -j 2``: each worker runs a slow iasl; SIGTERM reaches pvdesc only."""
    descs = [str(EXAMPLES / "uefi-acpi-hole.yaml"), str(EXAMPLES / "numa-4node-acpi.yaml")]
    argv = ["validate", "--no-external", "--jobs", "2", *descs]
    code, err = interrupt_slow_tool(tmp_path, "iasl", argv, signal.SIGTERM, runs=2)
    assert (code, err) == (143, "pvdesc: stopped by SIGTERM\n")
