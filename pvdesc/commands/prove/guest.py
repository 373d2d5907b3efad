"""Boot a real arm64 Linux guest under ``qemu-system-aarch64`` and read its ``/proc/iomem``.

The reusable machinery behind the boot tests (and a later ``pvdesc prove``):

- :func:`find_parts`: the Debian arm64 kernel and busybox that
  ``scripts/fetch-guest`` unpacks into a cache directory outside the repository;
- :func:`newc_archive`, :func:`initramfs`, :func:`acpi_table_archive`: a newc
  cpio initramfs built in pure Python whose ``/init`` (``templates/guest-init.sh.j2``)
  prints markers around ``cat /proc/iomem`` and around the ``/memory`` and
  ``/reserved-memory`` properties of the devicetree the kernel saw, then powers
  off; ACPI tables go in an uncompressed archive placed first, under ``kernel/firmware/acpi/``
  (Linux ``initrd_table_override.rst``; docs/boot-evidence.md §5);
- :func:`boot`: QEMU (TCG, ``virt``) in its own process group with a timeout;
  on timeout the whole group is killed.  Direct DT boot (``-dtb``) or UEFI
  (EDK2 ``QEMU_EFI.fd`` in pflash, docs/boot-evidence.md §4);
- :func:`dump_dtb`: the DTB QEMU itself builds for a given ``-m``/``-smp``
  (``-machine virt,dumpdtb=``), to check a description against QEMU's RAM;
- :func:`parse_iomem`: ``/proc/iomem`` lines as ranges with nesting depth.

Nothing here needs KVM: everything runs under TCG (docs/boot-evidence.md §6).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pvdesc.core.ranges import Range
from pvdesc.emit import templating
from pvdesc.errors import ToolError
from pvdesc.tools import proc

QEMU = "qemu-system-aarch64"
#: EDK2 for QEMU virt from Debian's qemu-efi-aarch64 (docs/boot-evidence.md §4).
UEFI_FIRMWARE = Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")
#: QEMU virt's pflash devices are 64 MiB each; the images are padded to that
#: (docs/boot-evidence.md §4).
PFLASH_SIZE = 64 << 20
#: QEMU virt puts RAM at 1 GiB (hw/arm/virt.c base_memmap, docs/vmm-layouts.md §1).
QEMU_VIRT_RAM_BASE = 0x40000000
#: Printed by the guest's /init around ``cat /proc/iomem``.
IOMEM_BEGIN = "PVDESC-IOMEM-BEGIN"
IOMEM_END = "PVDESC-IOMEM-END"
#: Printed around the guest's devicetree memory properties (``od`` hex dumps of
#: ``/sys/firmware/devicetree/base/{memory*,reserved-memory/*}``).
DT_BEGIN = "PVDESC-DT-BEGIN"
DT_END = "PVDESC-DT-END"
#: The install commands named when a part is missing.
QEMU_INSTALL = "apt-get install qemu-system-arm"
UEFI_INSTALL = "apt-get install qemu-efi-aarch64"
FETCH_GUEST = "scripts/fetch-guest"
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
    extra: tuple[str, ...] = field(default_factory=tuple)
    machine: str = "virt"
    maxcpus: int | None = None
    shape: tuple[str, ...] = field(default_factory=tuple)


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
        argv: the QEMU command line that ran (its temporary paths are gone).
    """

    serial: str
    returncode: int
    iomem: tuple[IomemEntry, ...]
    argv: tuple[str, ...] = ()


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
            raise ToolError(f"guest kernel/busybox missing: run {FETCH_GUEST}", str(p))
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
    """The guest's ``/init``: ``/proc/iomem`` and the DT memory nodes between markers; poweroff."""
    return templating.render(
        "guest-init.sh.j2", begin=IOMEM_BEGIN, end=IOMEM_END, dt_begin=DT_BEGIN, dt_end=DT_END
    )


def initramfs(busybox: bytes, init: str | None = None, extra: Sequence[CpioFile] = ()) -> bytes:
    """An uncompressed newc initramfs: ``/bin/busybox``, ``extra`` files, and ``/init``.

    ``init`` is the ``/init`` script (default: :func:`init_script`, the TCG guest's).
    The KVM host and the Linux guest under KVM use the same skeleton with their own.
    """
    files = [CpioFile(d, mode=0o040755) for d in ("bin", "dev", "proc", "sys")]
    files.append(CpioFile("bin/busybox", busybox, 0o100755))
    files += extra
    script = init_script() if init is None else init
    files.append(CpioFile("init", script.encode(), 0o100755))
    return newc_archive(files)


def acpi_table_archive(tables: Mapping[str, bytes]) -> bytes:
    """The uncompressed archive Linux scans for extra ACPI tables (place it first in the initrd).

    ``tables`` maps a file name (``ssdt.aml``) to the table bytes; they land in
    ``kernel/firmware/acpi/`` (``initrd_table_override.rst``, docs/acpi.md §3).
    """
    files = [
        CpioFile("kernel", mode=0o040755),
        CpioFile("kernel/firmware", mode=0o040755),
        CpioFile(ACPI_TABLE_DIR, mode=0o040755),
    ]
    files += [CpioFile(f"{ACPI_TABLE_DIR}/{n}", data) for n, data in sorted(tables.items())]
    return newc_archive(files)


def qemu() -> str:
    """The path of ``qemu-system-aarch64``; :class:`ToolError` naming the install command."""
    return proc.program(QEMU, f"install it with: {QEMU_INSTALL}")


#: QEMU rounds ``-m`` up to a multiple of 8 KiB (softmmu/vl.c ``set_memory_options``).
QEMU_RAM_ALIGN = 8 << 10


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


def _last_line(output: str) -> str:
    lines = [ln for ln in (serial_line(x) for x in output.splitlines()) if ln != "no output"]
    return lines[-1] if lines else "no output"


def dump_dtb(m: Machine, timeout: float = 60.0) -> bytes:
    """The DTB QEMU builds for ``m`` (``-machine virt,dumpdtb=``), with QEMU's ``/memory``."""
    with tempfile.TemporaryDirectory(prefix="pvdesc-dumpdtb-") as tmp:
        out = Path(tmp) / "virt.dtb"
        args = machine_args(m)
        args[1] = f"{m.machine},dumpdtb={out}"
        res = proc.run_checked([qemu(), *args, "-display", "none", "-nodefaults"], timeout=timeout)
        if res.returncode != 0 or not out.is_file():
            raise ToolError(f"dumpdtb failed (exit {res.returncode}): {proc.summary(res)}", QEMU)
        return out.read_bytes()


def boot(m: Machine, parts: GuestParts, initrd: bytes, timeout: float = BOOT_TIMEOUT) -> BootResult:
    """Boot ``parts.kernel`` with ``initrd``; return the serial output and its ``/proc/iomem``.

    Raises :class:`ToolError` on timeout (:func:`run_machine`) or when the markers never appear.
    """
    res = run_machine(m, parts, initrd, timeout)
    return BootResult(res.stdout, res.returncode, parse_iomem(iomem_text(res.stdout)), res.argv)


def run_machine(
    m: Machine, parts: GuestParts, initrd: bytes, timeout: float = BOOT_TIMEOUT
) -> proc.Result:
    """Run QEMU with ``parts.kernel`` and ``initrd`` until the guest powers off.

    QEMU runs in its own process group with ``-no-reboot``; the guest's
    ``/init`` powers off.  UEFI boots copy ``QEMU_EFI.fd`` into a 64 MiB code
    pflash and use an empty 64 MiB vars pflash in a temporary directory.  The
    serial console is the result's ``stdout`` (stderr merged).  Raises
    :class:`ToolError` when the guest does not power off within ``timeout``.
    """
    with tempfile.TemporaryDirectory(prefix="pvdesc-boot-") as tmp:
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
        argv += ["-kernel", str(parts.kernel), "-initrd", str(work / "initrd.img")]
        argv += ["-append", m.append, *m.extra]
        res = proc.run(argv, timeout=timeout, cwd=work, merge_stderr=True)
    if res.timed_out:
        raise ToolError(
            f"guest did not power off within {timeout:g} s (QEMU's process group was killed); "
            f"last line: {_last_line(res.stdout)}",
            QEMU,
        )
    return res


def section(serial: str, begin: str, end: str) -> str | None:
    """The text between the ``begin`` and ``end`` marker lines of a serial log, or ``None``."""
    text = serial.replace("\r\n", "\n")
    start = text.find(begin + "\n")
    stop = text.find(end, start + 1)
    if start < 0 or stop < 0:
        return None
    return text[start + len(begin) + 1 : stop]


def iomem_text(serial: str) -> str:
    """The ``/proc/iomem`` text between the markers in a serial log."""
    text = section(serial, IOMEM_BEGIN, IOMEM_END)
    if text is None:
        raise ToolError(f"guest printed no /proc/iomem; last line: {_last_line(serial)}", QEMU)
    return text


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
