"""Helpers shared by the check/dtb tests: compile DTS with dtc, dump QEMU DTBs, run the CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tools import program, pvdesc

QEMU = "qemu-system-aarch64"
#: QEMU virt's own stolen-time slot (docs/vmm-layouts.md §1: hw/arm/virt.c VIRT_PVTIME).
QEMU_PVTIME = 0x090A0000
QEMU_PVTIME_SIZE = 0x10000


def dtc(text: str, tmp: Path, name: str = "t") -> Path:
    """Compile DTS text to ``tmp/name.dtb`` with dtc (fails the test if dtc fails)."""
    src = tmp / f"{name}.dts"
    out = tmp / f"{name}.dtb"
    src.write_text("/dts-v1/;\n" + text)
    subprocess.run(
        [program("dtc"), "-q", "-I", "dts", "-O", "dtb", "-o", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def qemu_dtb(tmp: Path, name: str, *args: str) -> Path:
    """``qemu-system-aarch64 -machine virt,...,dumpdtb=`` (TCG, no KVM needed)."""
    out = tmp / f"{name}.dtb"
    machine = "virt,gic-version=3" if "-smp" in args else "virt"
    cmd = [program(QEMU), "-machine", f"{machine},dumpdtb={out}", "-cpu", "max", "-nographic"]
    cmd += ["-net", "none", "-display", "none", *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pvdesc`` in a subprocess and capture its output."""
    return pvdesc(*args, timeout=timeout)


def root(body: str, cells: str = "#address-cells = <2>; #size-cells = <2>;") -> str:
    """A root node with the given body (and QEMU-like 2/2 cells by default)."""
    return f'/ {{ compatible = "linux,dummy-virt"; model = "t"; {cells}\n{body}\n}};\n'


def memory(base: int, size: int) -> str:
    """A ``memory@`` node under 2/2 root cells."""
    return (
        f'memory@{base:x} {{ device_type = "memory"; '
        f"reg = <{base >> 32:#x} {base & 0xFFFFFFFF:#x} "
        f"{size >> 32:#x} {size & 0xFFFFFFFF:#x}>; }};"
    )
