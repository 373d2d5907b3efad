"""Run ``qemu-system-aarch64`` through :mod:`pvdesc.tools.proc`: the machine's arguments,
``dumpdtb``, a boot with the serial console captured, the timeout.

QEMU runs in its own process group with a timeout; on timeout the whole group is
killed.  Direct DT boot (``-dtb``) or UEFI (EDK2 ``QEMU_EFI.fd`` in pflash,
docs/boot-evidence.md §4).  Nothing here needs KVM (docs/boot-evidence.md §6).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import NamedTuple

from pvdesc.errors import ToolError
from pvdesc.tools import proc, signals

QEMU = "qemu-system-aarch64"
#: EDK2 for QEMU virt from Debian's qemu-efi-aarch64 (docs/boot-evidence.md §4).
UEFI_FIRMWARE = Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")
#: QEMU virt's pflash devices are 64 MiB each; the images are padded to that
#: (docs/boot-evidence.md §4).
PFLASH_SIZE = 64 << 20
#: QEMU virt puts RAM at 1 GiB (hw/arm/virt.c base_memmap, docs/vmm-layouts.md §1).
QEMU_VIRT_RAM_BASE = 0x40000000
#: The install commands named when a part is missing.
QEMU_INSTALL = "apt-get install qemu-system-arm"
UEFI_INSTALL = "apt-get install qemu-efi-aarch64"
#: Seconds a boot may take before the QEMU process group is killed (one boot is ~20 s).
BOOT_TIMEOUT = 300.0
#: QEMU rounds ``-m`` up to a multiple of 8 KiB (softmmu/vl.c ``set_memory_options``).
QEMU_RAM_ALIGN = 8 << 10


class Machine(NamedTuple):
    """The QEMU ``virt`` machine to boot.

    Attributes:
        memory: RAM size in bytes (``-m``); RAM starts at :data:`QEMU_VIRT_RAM_BASE`.
        smp: vCPUs (``-smp``).
        uefi: boot through EDK2 (``QEMU_EFI.fd``) instead of loading the kernel directly.
        dtb: a DTB to pass with ``-dtb`` (direct DT boots), or ``None`` for QEMU's own.
        append: the kernel command line.
        cpu: the ``-cpu`` model.
        extra: further QEMU arguments for the boot only.
        machine: the ``-machine`` value (``virt`` and its options).
        maxcpus: possible vCPUs (``-smp N,maxcpus=M``), or ``None``.
        shape: arguments that shape the machine (NUMA memory backends and nodes),
            given to ``dumpdtb`` and to the boot alike so both see the same RAM.
    """

    memory: int
    smp: int = 1
    uefi: bool = False
    dtb: Path | None = None
    append: str = "console=ttyAMA0"
    cpu: str = "max"
    extra: tuple[str, ...] = ()
    machine: str = "virt"
    maxcpus: int | None = None
    shape: tuple[str, ...] = ()


def qemu() -> str:
    """The path of ``qemu-system-aarch64``; :class:`ToolError` naming the install command."""
    return proc.program(QEMU, f"install it with: {QEMU_INSTALL}")


def qemu_size(size: int) -> str:
    """A RAM size as QEMU takes it exactly: ``NM`` for whole MiB, else ``NK``.

    QEMU would silently round any other size up (``QEMU_RAM_ALIGN``), so refuse it.
    """
    if size <= 0 or size % QEMU_RAM_ALIGN:
        raise ToolError(f"QEMU RAM sizes are multiples of 8 KiB, not {size:#x} bytes", QEMU)
    return f"{size >> 20}M" if size % (1 << 20) == 0 else f"{size >> 10}K"


def machine_args(m: Machine) -> list[str]:
    """``-machine``, ``-cpu``, ``-smp``, ``-m`` and ``shape`` (shared by boot and dumpdtb)."""
    smp = str(m.smp) if m.maxcpus is None else f"{m.smp},maxcpus={m.maxcpus}"
    args = ["-machine", m.machine, "-cpu", m.cpu, "-smp", smp, "-m", qemu_size(m.memory)]
    return [*args, *m.shape]


def serial_line(text: str, limit: int = 200) -> str:
    """A serial-console line as printable text (ANSI escapes and controls dropped)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text[:limit] or "no output"


def last_line(output: str) -> str:
    """The last non-empty line of a serial log, as :func:`serial_line` prints it."""
    lines = [ln for ln in (serial_line(x) for x in output.splitlines()) if ln != "no output"]
    return lines[-1] if lines else "no output"


def dump_dtb(m: Machine, timeout: float = 60.0) -> bytes:
    """The DTB QEMU builds for ``m`` (``-machine virt,dumpdtb=``), with QEMU's ``/memory``."""
    with signals.scratch("pvdesc-dumpdtb-") as tmp:
        out = Path(tmp) / "virt.dtb"
        args = machine_args(m)
        args[1] = f"{m.machine},dumpdtb={out}"
        res = proc.run_checked([qemu(), *args, "-display", "none", "-nodefaults"], timeout=timeout)
        if res.returncode != 0 or not out.is_file():
            raise ToolError(f"dumpdtb failed (exit {res.returncode}): {proc.summary(res)}", QEMU)
        return out.read_bytes()


def run_machine(
    m: Machine, kernel: Path, initrd: bytes, timeout: float = BOOT_TIMEOUT
) -> proc.Result:
    """Run QEMU with ``kernel`` and ``initrd`` until the guest powers off.

    QEMU runs in its own process group with ``-no-reboot``; the guest's
    ``/init`` powers off.  UEFI boots copy ``QEMU_EFI.fd`` into a 64 MiB code
    pflash and use an empty 64 MiB vars pflash in a temporary directory.  The
    serial console is the result's ``stdout`` (stderr merged).  Raises
    :class:`ToolError` when the guest does not power off within ``timeout``.
    """
    with signals.scratch("pvdesc-boot-") as tmp:
        work = Path(tmp)
        (work / "initrd.img").write_bytes(initrd)
        argv = [qemu(), *machine_args(m), "-display", "none", "-nodefaults", "-no-reboot"]
        argv += ["-serial", "stdio", "-monitor", "none", "-net", "none"]
        if m.uefi:
            if not UEFI_FIRMWARE.is_file():
                raise ToolError(
                    f"EDK2 firmware missing; install it with: {UEFI_INSTALL}", str(UEFI_FIRMWARE)
                )
            code, vars_ = work / "efi.fd", work / "vars.fd"
            shutil.copyfile(UEFI_FIRMWARE, code)
            for p in (code, vars_):
                with p.open("ab") as fh:
                    fh.truncate(PFLASH_SIZE)
            argv += ["-drive", f"if=pflash,format=raw,file={code},readonly=on"]
            argv += ["-drive", f"if=pflash,format=raw,file={vars_}"]
        if m.dtb is not None:
            argv += ["-dtb", str(m.dtb)]
        argv += ["-kernel", str(kernel), "-initrd", str(work / "initrd.img")]
        argv += ["-append", m.append, *m.extra]
        res = proc.run(argv, timeout=timeout, cwd=work, merge_stderr=True)
    if res.timed_out:
        raise ToolError(
            f"guest did not power off within {timeout:g} s (QEMU's process group was killed); "
            f"last line: {last_line(res.stdout)}",
            QEMU,
        )
    return res
