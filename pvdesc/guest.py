"""Boot a real arm64 Linux guest under ``qemu-system-aarch64`` and read its ``/proc/iomem``.

The reusable machinery behind the boot tests (and a later ``pvdesc prove``):

- :func:`find_parts`: the Debian arm64 kernel and busybox that
  ``scripts/fetch-guest`` unpacks into a cache directory outside the repository;
- :func:`newc_archive`, :func:`initramfs`, :func:`acpi_table_archive`: a newc
  cpio initramfs built in pure Python whose ``/init`` (``templates/guest-init.sh.j2``)
  prints markers around ``cat /proc/iomem`` and powers off; ACPI tables go in
  an uncompressed archive placed first, under ``kernel/firmware/acpi/``
  (Linux ``initrd_table_override.rst``; e2e-boot.md "UEFI + ACPI boot");
- :func:`boot`: QEMU (TCG, ``virt``) in its own process group with a timeout;
  on timeout the whole group is killed.  Direct DT boot (``-dtb``) or UEFI
  (EDK2 ``QEMU_EFI.fd`` in pflash, e2e-boot.md);
- :func:`dump_dtb`: the DTB QEMU itself builds for a given ``-m``/``-smp``
  (``-machine virt,dumpdtb=``), to check a description against QEMU's RAM;
- :func:`parse_iomem`: ``/proc/iomem`` lines as ranges with nesting depth.

Nothing here needs KVM: everything runs under TCG (e2e-boot.md "What this cannot show").
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pvdesc import proc, templating
from pvdesc.errors import ToolError, one_line
from pvdesc.model import Range

QEMU = "qemu-system-aarch64"
#: EDK2 for QEMU virt from Debian's qemu-efi-aarch64 (e2e-boot.md "UEFI + ACPI boot").
UEFI_FIRMWARE = Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")
#: QEMU virt's pflash devices are 64 MiB each; the images are padded to that (e2e-boot.md).
PFLASH_SIZE = 64 << 20
#: QEMU virt puts RAM at 1 GiB (hw/arm/virt.c base_memmap, vmm-layouts.md).
QEMU_VIRT_RAM_BASE = 0x40000000
#: Printed by the guest's /init around ``cat /proc/iomem``.
IOMEM_BEGIN = "PVDESC-IOMEM-BEGIN"
IOMEM_END = "PVDESC-IOMEM-END"
#: Where Linux looks for upgrade/extra ACPI tables in the first (uncompressed) initrd archive.
ACPI_TABLE_DIR = "kernel/firmware/acpi"
#: Seconds a boot may take before the QEMU process group is killed (one boot is ~20 s).
BOOT_TIMEOUT = 300.0

_IOMEM_RE = re.compile(
    r"^(?P<indent>\s*)(?P<lo>[0-9a-fA-F]+)-(?P<hi>[0-9a-fA-F]+)\s*:\s*(?P<name>.*)$"
)


@dataclass(frozen=True)
class GuestParts:
    """The guest kernel and userland.

    Attributes:
        kernel: the arm64 kernel image (Debian's ``vmlinuz``; QEMU takes it as is).
        busybox: a static arm64 busybox binary.
        kernel_package: the Debian package it came from (informational).
    """

    kernel: Path
    busybox: Path
    kernel_package: str = ""


@dataclass(frozen=True)
class CpioFile:
    """One entry of a newc archive.

    Attributes:
        path: path inside the archive, no leading ``/``.
        data: file contents (empty for directories).
        mode: full ``st_mode`` (type and permission bits).
    """

    path: str
    data: bytes = b""
    mode: int = 0o100644


@dataclass(frozen=True)
class Machine:
    """The QEMU ``virt`` machine to boot.

    Attributes:
        memory: RAM size in bytes (``-m``); RAM starts at :data:`QEMU_VIRT_RAM_BASE`.
        smp: vCPUs (``-smp``).
        uefi: boot through EDK2 (``QEMU_EFI.fd``) instead of loading the kernel directly.
        dtb: a DTB to pass with ``-dtb`` (direct DT boots), or ``None`` for QEMU's own.
        append: the kernel command line.
        cpu: the ``-cpu`` model.
        extra: further QEMU arguments.
    """

    memory: int
    smp: int = 1
    uefi: bool = False
    dtb: Path | None = None
    append: str = "console=ttyAMA0"
    cpu: str = "max"
    extra: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class IomemEntry:
    """One ``/proc/iomem`` line.

    Attributes:
        range: the address range (``lo-hi`` inclusive in the file).
        name: the resource name (``System RAM``, ``pnp 00:01``, ``reserved``, ...).
        depth: nesting level (two spaces of indentation per level).
    """

    range: Range
    name: str
    depth: int


@dataclass(frozen=True)
class BootResult:
    """What a boot produced.

    Attributes:
        serial: everything the guest wrote to the serial console.
        returncode: QEMU's exit status.
        iomem: the parsed ``/proc/iomem`` the guest printed.
    """

    serial: str
    returncode: int
    iomem: tuple[IomemEntry, ...]


def cache_dir() -> Path:
    """Where ``scripts/fetch-guest`` puts the guest parts (outside the repository)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pvdesc" / "guest"


def find_parts(directory: Path | None = None) -> GuestParts:
    """The kernel and busybox from ``directory`` (default :func:`cache_dir`)."""
    d = directory or cache_dir()
    kernel, busybox = d / "vmlinuz", d / "busybox"
    for p in (kernel, busybox):
        if not p.is_file():
            raise ToolError("guest kernel/busybox missing: run scripts/fetch-guest", str(p))
    pkg = d / "kernel-package"
    return GuestParts(kernel, busybox, pkg.read_text().strip() if pkg.is_file() else "")


def newc_archive(files: Sequence[CpioFile]) -> bytes:
    """A ``newc`` (SVR4, no CRC) cpio archive of ``files``, with the trailer.

    Format: 110-byte ASCII header ``070701`` + 13 eight-digit hex fields, the
    NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes
    (Linux ``Documentation/driver-api/early-userspace/buffer-format.rst``).
    """
    out = bytearray()
    entries = [*files, CpioFile("TRAILER!!!", b"", 0)]
    for ino, f in enumerate(entries, start=1):
        name = f.path.lstrip("/").encode() + b"\0"
        nlink = 2 if f.mode & 0o040000 else 1
        fields = (ino, f.mode, 0, 0, nlink, 0, len(f.data), 0, 0, 0, 0, len(name), 0)
        out += b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
        out += name
        out += b"\0" * (-len(out) % 4)
        out += f.data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def init_script() -> str:
    """The guest's ``/init``: markers around ``cat /proc/iomem``, then poweroff."""
    return templating.render("guest-init.sh.j2", begin=IOMEM_BEGIN, end=IOMEM_END)


def initramfs(busybox: bytes) -> bytes:
    """An uncompressed newc initramfs: ``/bin/busybox`` and the ``/init`` script."""
    return newc_archive(
        [
            CpioFile("bin", mode=0o040755),
            CpioFile("dev", mode=0o040755),
            CpioFile("proc", mode=0o040755),
            CpioFile("sys", mode=0o040755),
            CpioFile("bin/busybox", busybox, 0o100755),
            CpioFile("init", init_script().encode(), 0o100755),
        ]
    )


def acpi_table_archive(tables: Mapping[str, bytes]) -> bytes:
    """The uncompressed archive Linux scans for extra ACPI tables (place it first in the initrd).

    ``tables`` maps a file name (``ssdt.aml``) to the table bytes; they land in
    ``kernel/firmware/acpi/`` (``initrd_table_override.rst``, acpi.md §3).
    """
    files = [
        CpioFile("kernel", mode=0o040755),
        CpioFile("kernel/firmware", mode=0o040755),
        CpioFile(ACPI_TABLE_DIR, mode=0o040755),
    ]
    files += [CpioFile(f"{ACPI_TABLE_DIR}/{n}", data) for n, data in sorted(tables.items())]
    return newc_archive(files)


@dataclass(frozen=True)
class ProcessResult:
    """A finished (or killed) process.

    Attributes:
        returncode: exit status (negative signal number if killed).
        output: stdout and stderr, merged.
        timed_out: True when the timeout expired and the group was killed.
    """

    returncode: int
    output: str
    timed_out: bool


def run_group(argv: Sequence[str], timeout: float, cwd: Path | None = None) -> ProcessResult:
    """Run ``argv`` in a new process group; on timeout kill the whole group (SIGKILL).

    A thin wrapper over :func:`pvdesc.proc.run` with stderr merged into the output.
    """
    res = proc.run(argv, timeout=timeout, cwd=cwd, merge_stderr=True)
    return ProcessResult(res.returncode, res.stdout, res.timed_out)


def qemu() -> str:
    """The path of ``qemu-system-aarch64``; :class:`ToolError` naming the package when missing."""
    path = shutil.which(QEMU)
    if path is None:
        raise ToolError("not found on PATH; install the Debian package qemu-system-arm", QEMU)
    return path


def _size_arg(size: int) -> str:
    if size % (1 << 20):
        raise ToolError(f"QEMU -m needs a whole number of MiB, not {size:#x} bytes", QEMU)
    return f"{size >> 20}M"


def machine_args(m: Machine) -> list[str]:
    """``-machine``, ``-cpu``, ``-smp`` and ``-m`` for ``m`` (shared by boot and dumpdtb)."""
    return ["-machine", "virt", "-cpu", m.cpu, "-smp", str(m.smp), "-m", _size_arg(m.memory)]


def dump_dtb(m: Machine, timeout: float = 60.0) -> bytes:
    """The DTB QEMU builds for ``m`` (``-machine virt,dumpdtb=``), with QEMU's ``/memory``."""
    with tempfile.TemporaryDirectory(prefix="pvdesc-dumpdtb-") as tmp:
        out = Path(tmp) / "virt.dtb"
        args = machine_args(m)
        args[1] = f"virt,dumpdtb={out}"
        res = proc.run([qemu(), *args, "-display", "none", "-nodefaults"], timeout=timeout)
        if res.timed_out:
            raise proc.timeout_error(res, timeout)
        if res.returncode != 0 or not out.is_file():
            raise ToolError(f"dumpdtb failed (exit {res.returncode}): {proc.summary(res)}", QEMU)
        return out.read_bytes()


def boot(m: Machine, parts: GuestParts, initrd: bytes, timeout: float = BOOT_TIMEOUT) -> BootResult:
    """Boot ``parts.kernel`` with ``initrd``; return the serial output and its ``/proc/iomem``.

    QEMU runs in its own process group with ``-no-reboot``; the guest's
    ``/init`` powers off.  UEFI boots copy ``QEMU_EFI.fd`` into a 64 MiB code
    pflash and use an empty 64 MiB vars pflash in a temporary directory.
    Raises :class:`ToolError` on timeout or when the markers never appear.
    """
    with tempfile.TemporaryDirectory(prefix="pvdesc-boot-") as tmp:
        work = Path(tmp)
        (work / "initrd.img").write_bytes(initrd)
        argv = [qemu(), *machine_args(m), "-display", "none", "-nodefaults", "-no-reboot"]
        argv += ["-serial", "stdio", "-monitor", "none", "-net", "none"]
        if m.uefi:
            if not UEFI_FIRMWARE.is_file():
                raise ToolError(
                    "EDK2 firmware missing; install the Debian package qemu-efi-aarch64",
                    str(UEFI_FIRMWARE),
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
        argv += ["-kernel", str(parts.kernel), "-initrd", str(work / "initrd.img")]
        argv += ["-append", m.append, *m.extra]
        res = run_group(argv, timeout, cwd=work)
    if res.timed_out:
        tail = res.output.strip().splitlines()[-1:] or ["no output"]
        raise ToolError(
            f"guest did not power off within {timeout:g} s (QEMU's process group was killed); "
            f"last line: {one_line(tail[0], 200)}",
            QEMU,
        )
    return BootResult(res.output, res.returncode, parse_iomem(iomem_text(res.output)))


def iomem_text(serial: str) -> str:
    """The ``/proc/iomem`` text between the markers in a serial log."""
    text = serial.replace("\r\n", "\n")
    begin = text.find(IOMEM_BEGIN + "\n")
    end = text.find(IOMEM_END, begin + 1)
    if begin < 0 or end < 0:
        tail = text.strip().splitlines()[-1:] or ["no output"]
        raise ToolError(f"guest printed no /proc/iomem; last line: {tail[0]}", QEMU)
    return text[begin + len(IOMEM_BEGIN) + 1 : end]


def parse_iomem(text: str) -> tuple[IomemEntry, ...]:
    """Parse ``/proc/iomem`` (``lo-hi : name`` lines, two spaces per nesting level)."""
    out = []
    for line in text.splitlines():
        m = _IOMEM_RE.match(line)
        if m is None:
            continue
        lo, hi = int(m["lo"], 16), int(m["hi"], 16)
        out.append(IomemEntry(Range(lo, hi - lo + 1), m["name"].strip(), len(m["indent"]) // 2))
    return tuple(out)
