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
from tools import EXAMPLES, ROOT

#: The fake tool: a child in its group, both pids written where the test reads them.
SLOW_TOOL = """#!/bin/sh
sleep 300 &
echo "$$ $!" > "$PVDESC_TEST_PIDS.tmp"
mv "$PVDESC_TEST_PIDS.tmp" "$PVDESC_TEST_PIDS"
wait
"""


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def interrupt_slow_tool(tmp: Path, tool: str, argv: list[str], sig: int) -> tuple[int, str]:
    """Run ``pvdesc ARGV`` with a slow fake ``tool``, send ``sig`` once it runs.

    Returns (exit status, stderr) after checking that nothing is left behind.
    """
    fake = tmp / "bin"
    fake.mkdir()
    (fake / tool).write_text(SLOW_TOOL)
    (fake / tool).chmod(0o755)
    scratch = tmp / "tmpdir"
    scratch.mkdir()
    pids_file = tmp / "pids"
    env = {
        **os.environ,
        "PATH": f"{fake}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(scratch),
        "PVDESC_TEST_PIDS": str(pids_file),
        "XDG_CACHE_HOME": str(tmp / "cache"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pvdesc.cli", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(1200):  # the tool has started (or pvdesc ended first: a failure)
            if pids_file.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert pids_file.exists(), f"the fake {tool} never ran: {proc.communicate()[1]}"
        tool_pid, child_pid = (int(p) for p in pids_file.read_text().split())
        assert alive(tool_pid) and alive(child_pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [pid for pid in (tool_pid, child_pid) if alive(pid)]
    for pid in left:  # do not leave them to the next test, then fail
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"{tool} (pid {tool_pid}) or its child (pid {child_pid}) still runs"
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
