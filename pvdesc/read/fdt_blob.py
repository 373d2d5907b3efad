"""Open an untrusted flattened devicetree blob safely and read its properties with libfdt.

``pvdesc check`` audits DTBs it did not write (a VMM's own, or QEMU's
``-machine virt,dumpdtb=``), so every blob is hostile until proven otherwise:

1. the file is refused above :data:`MAX_DTB_BYTES` before it is read whole;
2. the header is checked by hand (magic, ``totalsize`` within the file, version)
   so the common mistakes get a precise message;
3. ``fdt_check_full`` (libfdt's complete structural check, libfdt/fdt_check.c) runs
   before any node is visited;
4. the walker (:mod:`pvdesc.read.dtb`) then visits nodes with ``fdt_next_node``,
   which skips FDT_NOP tags itself, bounded by :data:`MAX_NODES` and
   :data:`MAX_DEPTH` (Linux's ``FDT_MAX_DEPTH`` in ``drivers/of/fdt.c``).

Property values are compared as the firmware compares them: :func:`first_string`
is what ``strcmp`` sees, :func:`pei_type_matches` what EDK2's PEI ``AsciiStrnCmp``
sees.
"""

from __future__ import annotations

# libfdt's compiled functions, called directly: the ``libfdt`` module around them adds a
# Python call per property read and its classes (Fdt, FdtSw, Property), which the reader
# does not use, cost a millisecond to import at every ``pvdesc check``.
import _libfdt

from pvdesc.errors import DTError
from pvdesc.tools.inputs import too_big

#: Refuse bigger files: QEMU pads its DTB to 1 MiB, a 100,000-node tree is ~5 MiB.
MAX_DTB_BYTES = 64 << 20
#: Refuse trees with more nodes than this (a real VM has a few hundred).
MAX_NODES = 200_000
#: Linux refuses deeper trees when unflattening (``FDT_MAX_DEPTH`` 64, drivers/of/fdt.c).
MAX_DEPTH = 64
#: Largest ``#address-cells`` / ``#size-cells`` accepted: 3 address cells is the largest
#: binding in use (PCI), and 4 cells already spans 128 bits, so more can only be corruption.
MAX_CELLS = 4
#: Default cells when a parent has no ``#address-cells`` / ``#size-cells`` (DT spec §2.3.5).
DEFAULT_ADDRESS_CELLS = 2
DEFAULT_SIZE_CELLS = 1

FDT_MAGIC = 0xD00DFEED
FDT_HEADER_SIZE = 40
#: libfdt reads versions 16 and 17 (``FDT_FIRST_SUPPORTED_VERSION`` .. ``LAST``).
FDT_LAST_SUPPORTED_VERSION = 17

#: ``status`` values of an available node (``of_fdt_device_is_available``, drivers/of/fdt.c;
#: EDK2's ``IsNodeEnabled``, EmbeddedPkg/Drivers/FdtClientDxe/FdtClientDxe.c): both ``strcmp``
#: the property's first string.
_AVAILABLE = ("okay", "ok")


def err(file: str, message: str) -> DTError:
    """The one-line error naming the blob."""
    return DTError(message, file)


def available(status: bytes | None) -> bool:
    """A node with this ``status`` value (``None``: absent) is available."""
    return status is None or first_string(status) in _AVAILABLE


def first_string(raw: bytes | None) -> str | None:
    """What ``strcmp`` on a property's value compares: the bytes up to the first NUL.

    A value without a NUL is compared whole: in the blob it is followed by zero
    padding to 4 bytes or, when its length is a multiple of 4, by the next tag,
    whose first byte is 0 (FDT_PROP, FDT_BEGIN_NODE, FDT_END_NODE, FDT_NOP, FDT_END
    are all below 256).  So ``device_type = [6d 65 6d 6f 72 79]`` is ``"memory"`` and
    ``status = [6f 6b 61 79]`` is ``"okay"`` to Linux's ``strcmp``
    (``early_init_dt_scan_memory``, ``of_fdt_device_is_available``).  ``None``
    only when the property is absent.
    """
    if raw is None:
        return None
    return raw.split(b"\0", 1)[0].decode("latin-1")


def pei_type_matches(raw: bytes) -> bool:
    """``AsciiStrnCmp (Type, "memory", Len) == 0`` with ``Len`` the property's length.

    As QemuVirtMemInfoPeiLibConstructor (ArmVirtPkg/Library/QemuVirtMemInfoLib)
    compares ``device_type``: a length of 0 always matches, and the comparison
    stops after ``Len`` characters, so ``"mem"`` without a NUL matches too.
    """
    if not raw:
        return True
    want = b"memory\0"
    i, n = 0, len(raw)
    while raw[i] != 0 and want[i] != 0 and raw[i] == want[i] and n > 1:
        i, n = i + 1, n - 1
    return raw[i] == want[i]


def named(name: str, base: str) -> bool:
    """libfdt's ``fdt_path_offset("/base")`` match: ``base`` or ``base@unit`` (fdt_nodename_eq_)."""
    return name == base or name.startswith(base + "@")


def getprop(buf: bytearray, off: int, name: str) -> bytes | None:
    """The property's value, ``None`` when the node has no such property."""
    data: bytes | None = _libfdt.fdt_getprop(buf, off, name)[0]
    return data


def cells(file: str, path: str, name: str, raw: bytes | None, default: int) -> int:
    """A ``#address-cells``/``#size-cells`` value: one u32 cell, at most :data:`MAX_CELLS`."""
    if raw is None:
        return default
    if len(raw) != 4:
        raise err(file, f"{path}: {name} is {len(raw)} bytes, must be one u32 cell")
    value = int.from_bytes(raw, "big")
    if value > MAX_CELLS:
        raise err(
            file,
            f"{path}: {name} = <{value}> is absurd (at most {MAX_CELLS}: PCI uses 3, 4 already "
            "spans 128 bits); the DTB is corrupt",
        )
    return value


def _check_header(data: bytes | bytearray, file: str) -> None:
    if len(data) < FDT_HEADER_SIZE:
        raise err(file, f"truncated: {len(data)} bytes, a DTB header alone is {FDT_HEADER_SIZE}")
    magic = int.from_bytes(data[0:4], "big")
    if magic != FDT_MAGIC:
        raise err(file, f"not a DTB: magic is {magic:#010x}, expected {FDT_MAGIC:#010x}")
    total = int.from_bytes(data[4:8], "big")
    if total > len(data):
        raise err(file, f"truncated: header totalsize is {total} bytes, file has {len(data)}")
    last_comp = int.from_bytes(data[24:28], "big")
    if last_comp > FDT_LAST_SUPPORTED_VERSION:
        raise err(file, f"DTB last_comp_version {last_comp} is newer than libfdt reads (17)")


def open_blob(data: bytes | bytearray, file: str) -> bytearray:
    """The blob, size- and header-checked and passed through ``fdt_check_full``, ready to walk.

    Raises :class:`DTError` (one line, naming ``file``).
    """
    if len(data) > MAX_DTB_BYTES:
        raise err(file, too_big(len(data), MAX_DTB_BYTES, "DTBs"))
    _check_header(data, file)
    total = int.from_bytes(data[4:8], "big")
    if isinstance(data, bytearray) and len(data) == total:
        buf = data  # read as it is (libfdt writes nothing), not copied
    else:
        buf = bytearray(memoryview(data)[:total])
    rc = _libfdt.fdt_check_full(buf, len(buf))
    if rc != 0:
        raise err(file, f"corrupt DTB: fdt_check_full: {_libfdt.fdt_strerror(rc)}")
    return buf


def mem_reserve_block(buf: bytearray, file: str) -> list[tuple[int, int]]:
    """The header's memory reservation block (``/memreserve/``): ``(address, size)`` pairs."""
    count = _libfdt.fdt_num_mem_rsv(buf)
    if count < 0:
        raise err(file, f"corrupt memory reservation block: {_libfdt.fdt_strerror(count)}")
    out = []
    for i in range(count):
        rc, addr, size = _libfdt.fdt_get_mem_rsv(buf, i)
        if rc < 0:
            raise err(file, f"/memreserve/[{i}]: {_libfdt.fdt_strerror(rc)}")
        out.append((addr, size))
    return out
