"""The guest a proof boots: the cached kernel and busybox, its newc initramfs, and one boot.

- :func:`find_parts`: the Debian arm64 kernel and busybox that
  ``scripts/fetch-guest`` unpacks into a cache directory outside the repository;
- :func:`newc_archive`, :func:`initramfs`, :func:`acpi_table_archive`: a newc
  cpio initramfs built in pure Python whose ``/init`` (``templates/guest-init.sh.j2``)
  prints markers around ``cat /proc/iomem`` and around the ``/memory`` and
  ``/reserved-memory`` properties of the devicetree the kernel saw, then powers
  off; ACPI tables go in an uncompressed archive placed first, under ``kernel/firmware/acpi/``
  (Linux ``initrd_table_override.rst``; docs/boot-evidence.md §5);
- :func:`boot`: QEMU (:mod:`pvdesc.tools.qemu`) with that initramfs, its
  ``/proc/iomem`` read back (:mod:`pvdesc.read.guest_output`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from pvdesc.emit import templating
from pvdesc.errors import ToolError
from pvdesc.read import guest_output
from pvdesc.read.guest_output import IomemEntry
from pvdesc.tools import qemu

FETCH_GUEST = "scripts/fetch-guest"
#: Where Linux looks for upgrade/extra ACPI tables in the first (uncompressed) initrd archive.
ACPI_TABLE_DIR = "kernel/firmware/acpi"


class GuestParts(NamedTuple):
    """The guest kernel and userland.

    Attributes:
        kernel: the arm64 kernel image (Debian's ``vmlinuz``; QEMU takes it as is).
        busybox: a static arm64 busybox binary.
        kernel_package: the Debian package it came from (informational).
    """

    kernel: Path
    busybox: Path
    kernel_package: str = ""


class CpioFile(NamedTuple):
    """One entry of a newc archive.

    Attributes:
        path: path inside the archive, no leading ``/``.
        data: file contents (empty for directories).
        mode: full ``st_mode`` (type and permission bits).
    """

    path: str
    data: bytes = b""
    mode: int = 0o100644


class BootResult(NamedTuple):
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
        "guest-init.sh.j2",
        begin=guest_output.IOMEM_BEGIN,
        end=guest_output.IOMEM_END,
        dt_begin=guest_output.DT_BEGIN,
        dt_end=guest_output.DT_END,
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


def boot(
    m: qemu.Machine, parts: GuestParts, initrd: bytes, timeout: float = qemu.BOOT_TIMEOUT
) -> BootResult:
    """Boot ``parts.kernel`` with ``initrd``; return the serial output and its ``/proc/iomem``.

    Raises :class:`ToolError` on timeout (:func:`pvdesc.tools.qemu.run_machine`) or when the
    markers never appear.
    """
    res = qemu.run_machine(m, parts.kernel, initrd, timeout)
    iomem = guest_output.parse_iomem(guest_output.iomem_text(res.stdout))
    return BootResult(res.stdout, res.returncode, iomem, res.argv)


def guest_parts(kernel: str | Path | None = None) -> GuestParts:
    """The kernel (``kernel``, or the cached one) and the cached busybox.

    Missing parts raise :class:`ToolError` naming ``scripts/fetch-guest``.
    """
    if kernel is None:
        return find_parts()
    path = Path(kernel)
    if not path.is_file():
        raise ToolError(
            f"no such kernel image; omit --kernel to use the one {FETCH_GUEST} caches",
            str(kernel),
        )
    busybox = cache_dir() / "busybox"
    if not busybox.is_file():
        raise ToolError(f"guest busybox missing: run {FETCH_GUEST}", str(busybox))
    return GuestParts(path, busybox, "")
