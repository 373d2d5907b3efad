"""Read an untrusted DTB with libfdt into an immutable address model.

``pvdesc check`` audits DTBs it did not write (a VMM's own, or QEMU's
``-machine virt,dumpdtb=``), so every blob is hostile until proven otherwise:

1. the file is refused above :data:`MAX_DTB_BYTES` before it is read whole;
2. the header is checked by hand (magic, ``totalsize`` within the file, version)
   so the common mistakes get a precise message;
3. ``fdt_check_full`` (libfdt's complete structural check) runs before any
   node is visited (docs/dt-libraries.md §2);
4. nodes are walked iteratively with ``fdt_next_node`` (libfdt skips FDT_NOP
   tags itself, docs/dt-libraries.md §1 bug 2 is ``fdt``'s, not libfdt's), with a
   bound on the node count (:data:`MAX_NODES`) and on the depth
   (:data:`MAX_DEPTH`, Linux's ``FDT_MAX_DEPTH`` in ``drivers/of/fdt.c``).

Addresses (DT spec §2.3.5; docs/dt-libraries.md §6.1):

- a ``reg`` is decoded with the *direct parent's* ``#address-cells`` /
  ``#size-cells``, which default to 2/1 when absent and are not inherited;
- the root must state ``#address-cells``: without it Linux's flat-tree code
  assumes 1 (``OF_ROOT_NODE_ADDR_CELLS_DEFAULT``, drivers/of/of_private.h) where
  the DT spec says 2, so ``/memory`` could not be read the way the guest reads it;
- ``/reserved-memory`` is honoured only with ``#address-cells``, ``#size-cells``
  (both present and equal to the root's) and ``ranges`` (present):
  ``__reserved_mem_check_root`` in drivers/of/fdt.c, docs/pvtime-and-dt.md §4;
  its children's ``reg`` are root addresses whatever ``ranges`` holds (Linux
  never applies it), and a child whose ``status`` is not ``okay`` is skipped;
- cell counts above :data:`MAX_CELLS` are refused: 3 address cells is the
  largest binding in use (PCI), and 4 cells already spans 128 bits, so more can
  only be corruption;
- a ``reg`` is translated to the root's address space through each ancestor's
  ``ranges``: an empty ``ranges`` is the identity, a missing one means the bus is
  not memory-mapped (``/cpus``, I2C, ...) and the node is recorded in
  :attr:`DeviceTree.skipped` with the reason instead;
- a parent with ``#size-cells = <0>`` has children whose ``reg`` carries no size
  (CPU MPIDRs): those are skipped with the reason too.

Numbers keep their low 64 bits (Linux's ``of_read_number``).  Translation
looks up an entry's *start* address in each window, as Linux's
``of_translate_address`` does (``of_bus_default_map``), so an entry that
straddles a window's end still exists; bus-specific matching (PCI's ``phys.hi``
space bits, as ``of_bus_pci_map``) is not modelled beyond dropping the bits above
64.  ``/reserved-memory`` and ``/chosen`` are found as libfdt's
``fdt_path_offset`` finds them: the first root child with that name, with or
without a unit address.  Memory nodes are recorded with the facts each consumer
reads (:class:`MemoryNode`); which of them are RAM for which boot mode is
:mod:`pvdesc.layout.beliefs`'s job.

Work is bounded, so a hostile blob is refused rather than slowing to a crawl:
at most :data:`MAX_ENTRIES` decoded ``reg``/``ranges`` entries in all, and at
most :data:`MAX_TRANSLATION_STEPS` window comparisons while translating them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import libfdt

from pvdesc.core.ranges import Range
from pvdesc.errors import DTError
from pvdesc.tools.inputs import display_name, read_bounded, too_big

#: Refuse bigger files: QEMU pads its DTB to 1 MiB, a 100,000-node tree is ~5 MiB.
MAX_DTB_BYTES = 64 << 20
#: Refuse trees with more nodes than this (a real VM has a few hundred).
MAX_NODES = 200_000
#: Linux refuses deeper trees when unflattening (``FDT_MAX_DEPTH`` 64, drivers/of/fdt.c).
MAX_DEPTH = 64
#: Largest ``#address-cells`` / ``#size-cells`` accepted (see the module docstring).
MAX_CELLS = 4
#: ``reg`` entries plus ``ranges`` windows in the whole tree (QEMU virt has about 100).
MAX_ENTRIES = 1_000_000
#: ``ranges`` window comparisons while translating every entry to root addresses.
MAX_TRANSLATION_STEPS = 5_000_000
#: Default cells when a parent has no ``#address-cells`` / ``#size-cells`` (DT spec §2.3.5).
DEFAULT_ADDRESS_CELLS = 2
DEFAULT_SIZE_CELLS = 1

#: ``status`` values of an available node (``of_fdt_device_is_available``, drivers/of/fdt.c;
#: EDK2's ``IsNodeEnabled``, EmbeddedPkg/Drivers/FdtClientDxe/FdtClientDxe.c): both ``strcmp``
#: the property's first string.
_AVAILABLE = ("okay", "ok")


def _available(status: bytes | None) -> bool:
    return status is None or first_string(status) in _AVAILABLE


FDT_MAGIC = 0xD00DFEED
FDT_HEADER_SIZE = 40
#: libfdt reads versions 16 and 17 (``FDT_FIRST_SUPPORTED_VERSION`` .. ``LAST``).
FDT_LAST_SUPPORTED_VERSION = 17


@dataclass(frozen=True)
class RegEntry:
    """One ``reg`` entry (or ``ranges`` window) of a node, translated to the root's address space.

    Attributes:
        path: the node's full path, e.g. ``/memory@40000000``.
        index: the entry's position in the property (0-based).
        range: the translated guest-physical range.
        numa_node: a memory node's ``numa-node-id`` (one u32 cell), else ``None``.
        prop: the property it comes from: ``reg``, or ``ranges`` for a bus window.
    """

    path: str
    index: int
    range: Range
    numa_node: int | None = None
    prop: str = "reg"

    @property
    def source(self) -> str:
        """``/memory@40000000 reg[0]``: how findings name it."""
        return f"{self.path} {self.prop}[{self.index}]"


@dataclass(frozen=True)
class Reservation:
    """A static ``/reserved-memory`` child (one with ``reg``) that Linux honours.

    A child whose ``status`` is not ``okay``/``ok`` is skipped (listed in
    :attr:`DeviceTree.skipped`), as Linux's ``fdt_scan_reserved_mem`` skips it.

    Attributes:
        path: the child's full path.
        index: the ``reg`` entry (the binding allows one; more are read anyway).
        range: the translated range.
        no_map: the ``no-map`` property is present: dropped from the linear map.
        reusable: the ``reusable`` property is present: the OS may allocate it.
        compatible: the ``compatible`` property is present: a kernel driver claims
            the range (``fdt_init_reserved_mem_node``, drivers/of/of_reserved_mem.c:
            an init function that fails, as ``restricted-dma-pool`` does with
            ``no-map``, makes it ``memblock_clear_nomap`` it back into RAM; one that
            succeeds, as ``shared-dma-pool``, hands it out for DMA buffers).
    """

    path: str
    index: int
    range: Range
    no_map: bool
    reusable: bool
    compatible: bool = False

    @property
    def source(self) -> str:
        return f"{self.path} reg[{self.index}]"

    @property
    def withheld(self) -> bool:
        """``no-map``, not ``reusable``, no ``compatible``: the OS neither maps nor uses it."""
        return self.no_map and not self.reusable and not self.compatible


@dataclass(frozen=True)
class MemoryNode:
    """A node whose ``device_type``'s first string is ``"memory"``, at any depth, as found.

    Which consumer counts it, and how, is :mod:`pvdesc.layout.beliefs`'s business; this
    only records the facts each consumer reads.

    Attributes:
        path: the node's full path.
        depth: 1 for a child of the root.
        available: ``status`` absent, ``"okay"`` or ``"ok"`` (``of_fdt_device_is_available``).
        reg: its ``reg`` entries, decoded with the parent's cells and translated.
        usable: ``linux,usable-memory`` decoded with the root's cells (Linux reads it
            instead of ``reg``), ``None`` when the property is absent.
        raw_reg: ``reg`` read as EDK2 reads it: (u64 base, u64 size) pairs, whatever
            the cells; ``None`` when ``reg`` is absent or not a multiple of 16 bytes.
        numa_node: ``numa-node-id`` (one u32 cell), else ``None``.
        pei_only: only EDK2's PEI scan takes it for a memory node: its
            ``device_type`` is not ``"memory"`` to ``strcmp`` but
            ``AsciiStrnCmp (Type, "memory", Len)`` matches it (an empty property, or
            a prefix of ``memory`` without its NUL), and its ``reg`` is 16 bytes
            (see :func:`pei_type_matches`); ``reg`` and ``usable`` are then empty.
    """

    path: str
    depth: int
    available: bool
    reg: tuple[RegEntry, ...]
    usable: tuple[RegEntry, ...] | None
    raw_reg: tuple[Range, ...] | None
    numa_node: int | None
    pei_only: bool = False


@dataclass(frozen=True)
class MemReserve:
    """One entry of the header's memory reservation block (``/memreserve/``).

    Attributes:
        index: position in the block.
        range: address and size.
    """

    index: int
    range: Range

    @property
    def source(self) -> str:
        return f"/memreserve/[{self.index}]"


@dataclass(frozen=True)
class Skipped:
    """A node whose ``reg`` is not a CPU-physical range, and why.

    Attributes:
        path: the node's full path.
        reason: e.g. "parent /cpus has no ranges: not memory-mapped".
    """

    path: str
    reason: str


@dataclass(frozen=True)
class DeviceTree:
    """The address facts of one DTB.

    Attributes:
        file: where it was read from (for messages).
        node_count: nodes visited, root included.
        memory: ``reg`` entries of every node whose ``device_type`` starts with
            ``"memory"``, at any depth and whatever its ``status`` (the candidates:
            :mod:`pvdesc.layout.beliefs` decides which of them each consumer counts).
        reserved: static children of the ``/reserved-memory`` node Linux finds
            (``fdt_path_offset``: the first root child named ``reserved-memory`` or
            ``reserved-memory@...``).
        reserved_ignored: why Linux ignores the whole ``/reserved-memory`` node
            (cells differ from the root's, or no ``ranges``:
            ``__reserved_mem_check_root``, docs/pvtime-and-dt.md §4), else ``None``.
        memreserve: the ``/memreserve/`` entries.
        devices: every other translatable ``reg`` entry.
        skipped: nodes with a ``reg`` that is not a CPU-physical range.
        windows: every translatable non-empty ``ranges`` window (a bus's window into
            its parent, e.g. PCIe MMIO), as root addresses; ``source`` ends in
            ``ranges[i]`` instead of ``reg[i]``.
        root_cells: the root's ``#address-cells``/``#size-cells`` (what ``/memory``
            and ``/reserved-memory`` use).
        memory_nodes: the facts of each memory node (see :class:`MemoryNode`).
        usable_memory_range: ``/chosen`` ``linux,usable-memory-range`` as Linux's
            ``early_init_dt_check_for_usable_mem_range`` decodes it (at most 2
            ranges, root cells), or ``None`` when absent or ignored by Linux.
        chosen: the path of the ``/chosen`` node Linux finds, if any.
        initrd: ``/chosen`` ``linux,initrd-start`` .. ``linux,initrd-end``, if both
            are present and ordered (``early_init_dt_check_for_initrd``).
    """

    file: str
    node_count: int
    memory: tuple[RegEntry, ...]
    reserved: tuple[Reservation, ...]
    reserved_ignored: str | None
    memreserve: tuple[MemReserve, ...]
    devices: tuple[RegEntry, ...]
    skipped: tuple[Skipped, ...]
    windows: tuple[RegEntry, ...] = ()
    root_cells: tuple[int, int] = (DEFAULT_ADDRESS_CELLS, DEFAULT_SIZE_CELLS)
    memory_nodes: tuple[MemoryNode, ...] = ()
    usable_memory_range: tuple[Range, ...] | None = None
    chosen: str | None = None
    initrd: Range | None = None


@dataclass(frozen=True)
class _Budget:
    """Counters that bound the work on one blob (mutable cells in a frozen holder).

    Attributes:
        file: the blob's name, for the refusal.
        entries: decoded ``reg``/``ranges`` entries so far (one-element list).
        steps: window comparisons so far (one-element list).
    """

    file: str
    entries: list[int]
    steps: list[int]

    def take_entries(self, n: int) -> None:
        self.entries[0] += n
        if self.entries[0] > MAX_ENTRIES:
            raise _err(
                self.file,
                f"more than {MAX_ENTRIES} reg/ranges entries: refusing to audit a tree this large",
            )

    def take_steps(self, n: int) -> None:
        self.steps[0] += n
        if self.steps[0] > MAX_TRANSLATION_STEPS:
            raise _err(
                self.file,
                f"translating reg through ranges takes more than {MAX_TRANSLATION_STEPS} steps: "
                "refusing a tree this complex",
            )


@dataclass(frozen=True)
class _Bus:
    """What a node's children need: its cells and how to reach the root.

    Attributes:
        path: the node's path.
        address_cells: the node's ``#address-cells`` (for its children).
        size_cells: the node's ``#size-cells``.
        ranges: ``None`` if its children's addresses are not translatable to the
            root, else the windows (child base, parent base, size) into the parent's
            space, ``()`` for the identity (empty ``ranges``, or the root).
        parent: the parent's bus (``None`` for the root).
        why_not: the reason when ``ranges`` is ``None``.
    """

    path: str
    address_cells: int
    size_cells: int
    ranges: tuple[tuple[int, int, int], ...] | None
    parent: _Bus | None
    why_not: str = ""


def _err(file: str, message: str) -> DTError:
    return DTError(message, file)


#: Linux's ``of_read_number`` (include/linux/of.h) accumulates cells into a u64: wider
#: numbers keep their low 64 bits.
MASK64 = (1 << 64) - 1


def _int_cells(data: bytes, start: int, n: int) -> int:
    """``n`` big-endian cells as Linux reads them: the low 64 bits (``of_read_number``)."""
    return int.from_bytes(data[start : start + 4 * n], "big") & MASK64


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


def _named(name: str, base: str) -> bool:
    """libfdt's ``fdt_path_offset("/base")`` match: ``base`` or ``base@unit`` (fdt_nodename_eq_)."""
    return name == base or name.startswith(base + "@")


def _getprop(buf: bytearray, off: int, name: str) -> bytes | None:
    data, _ = libfdt.fdt_getprop(buf, off, name)
    return None if data is None else bytes(data)


def _cells(file: str, path: str, name: str, raw: bytes | None, default: int) -> int:
    if raw is None:
        return default
    if len(raw) != 4:
        raise _err(file, f"{path}: {name} is {len(raw)} bytes, must be one u32 cell")
    value = int.from_bytes(raw, "big")
    if value > MAX_CELLS:
        raise _err(
            file,
            f"{path}: {name} = <{value}> is absurd (at most {MAX_CELLS}: PCI uses 3, 4 already "
            "spans 128 bits); the DTB is corrupt",
        )
    return value


def _translate(bus: _Bus, addr: int, budget: _Budget) -> int | None:
    """``addr`` (in ``bus``'s child space) as a root address, or ``None`` if unmapped.

    As Linux's ``of_translate_address`` (drivers/of/address.c): at each level the
    *start* address is looked up (``of_bus_default_map``: ``da`` in
    ``[cp, cp + s)``), so an entry straddling a window's end still translates;
    the result keeps the low 64 bits (``of_bus_default_translate``).
    """
    node: _Bus | None = bus
    while node is not None and node.parent is not None:
        if node.ranges is None:
            return None
        if node.ranges:
            budget.take_steps(len(node.ranges))
            for child, parent, length in node.ranges:
                if child <= addr < child + length:
                    addr = (parent + (addr - child)) & MASK64
                    break
            else:
                return None
        node = node.parent
    return addr


def _decode_ranges(
    file: str, path: str, raw: bytes, child_ac: int, parent_ac: int, sc: int, budget: _Budget
) -> tuple[tuple[int, int, int], ...]:
    # (child-bus-address, parent-bus-address, length): the child's #address-cells,
    # the parent's #address-cells, the child's #size-cells (DT spec §2.3.8).
    width = 4 * (child_ac + parent_ac + sc)
    if width == 0 or len(raw) % width:
        raise _err(
            file,
            f"{path}: ranges is {len(raw)} bytes, not a multiple of "
            f"({child_ac}+{parent_ac}+{sc}) cells",
        )
    budget.take_entries(len(raw) // width)
    out = []
    for pos in range(0, len(raw), width):
        child = _int_cells(raw, pos, child_ac)
        parent = _int_cells(raw, pos + 4 * child_ac, parent_ac)
        length = _int_cells(raw, pos + 4 * (child_ac + parent_ac), sc)
        out.append((child, parent, length))
    return tuple(out)


def _check_header(data: bytes, file: str) -> None:
    if len(data) < FDT_HEADER_SIZE:
        raise _err(file, f"truncated: {len(data)} bytes, a DTB header alone is {FDT_HEADER_SIZE}")
    magic = int.from_bytes(data[0:4], "big")
    if magic != FDT_MAGIC:
        raise _err(file, f"not a DTB: magic is {magic:#010x}, expected {FDT_MAGIC:#010x}")
    total = int.from_bytes(data[4:8], "big")
    if total > len(data):
        raise _err(file, f"truncated: header totalsize is {total} bytes, file has {len(data)}")
    last_comp = int.from_bytes(data[24:28], "big")
    if last_comp > FDT_LAST_SUPPORTED_VERSION:
        raise _err(file, f"DTB last_comp_version {last_comp} is newer than libfdt reads (17)")


def parse(data: bytes, file: str = "<dtb>") -> DeviceTree:
    """Check and decode a DTB.  Raises :class:`DTError` (one line, naming ``file``)."""
    if len(data) > MAX_DTB_BYTES:
        raise _err(file, too_big(len(data), MAX_DTB_BYTES, "DTBs"))
    _check_header(data, file)
    total = int.from_bytes(data[4:8], "big")
    buf = bytearray(data[:total])
    rc = libfdt.fdt_check_full(buf, len(buf))
    if rc != 0:
        raise _err(file, f"corrupt DTB: fdt_check_full: {libfdt.fdt_strerror(rc)}")
    try:
        return _walk(buf, file)
    except (libfdt.FdtException, UnicodeDecodeError) as exc:
        raise _err(file, f"corrupt DTB: {exc}") from None


def _memreserve(buf: bytearray, file: str) -> tuple[MemReserve, ...]:
    count = libfdt.fdt_num_mem_rsv(buf)
    if count < 0:
        raise _err(file, f"corrupt memory reservation block: {libfdt.fdt_strerror(count)}")
    out = []
    for i in range(count):
        rc, addr, size = libfdt.fdt_get_mem_rsv(buf, i)
        if rc < 0:
            raise _err(file, f"/memreserve/[{i}]: {libfdt.fdt_strerror(rc)}")
        out.append(MemReserve(i, Range(addr, size)))
    return tuple(out)


def _walk(buf: bytearray, file: str) -> DeviceTree:
    memory: list[RegEntry] = []
    reserved: list[Reservation] = []
    devices: list[RegEntry] = []
    skipped: list[Skipped] = []
    windows: list[RegEntry] = []
    budget = _Budget(file, [0], [0])
    reserved_ignored: str | None = None
    memory_nodes: list[MemoryNode] = []
    # fdt_path_offset("/reserved-memory") and ("/chosen"): the first root child so named.
    reserved_path: str | None = None
    chosen_path: str | None = None
    usable_range: tuple[Range, ...] | None = None
    initrd: Range | None = None
    root_cells = (0, 0)
    # stack[d] is the bus of the node at depth d (the parent of nodes at depth d+1).
    stack: list[_Bus] = []
    off, depth = 0, 0
    count = 0
    # fdt_next_node reports leaving the root with depth -1 (libfdt fdt.c).
    while off >= 0 and depth >= 0:
        count += 1
        if count > MAX_NODES:
            raise _err(file, f"more than {MAX_NODES} nodes: refusing to audit a tree this large")
        if depth > MAX_DEPTH:
            raise _err(file, f"nodes nested deeper than {MAX_DEPTH} levels (Linux's FDT_MAX_DEPTH)")
        del stack[depth:]
        parent = stack[-1] if stack else None
        name = libfdt.fdt_get_name(buf, off)[0]
        path = "/" if parent is None else f"{parent.path.rstrip('/')}/{name}"
        ac = _cells(
            file,
            path,
            "#address-cells",
            _getprop(buf, off, "#address-cells"),
            DEFAULT_ADDRESS_CELLS,
        )
        sc = _cells(
            file, path, "#size-cells", _getprop(buf, off, "#size-cells"), DEFAULT_SIZE_CELLS
        )
        if parent is None:
            if _getprop(buf, off, "#address-cells") is None:
                raise _err(
                    file,
                    "/: no #address-cells: Linux then reads /memory with 1 address cell, the DT "
                    "spec with 2, so the guest's RAM is ambiguous; state #address-cells and "
                    "#size-cells on the root",
                )
            if ac == 0:
                # early_init_dt_scan_memory reads 0 address cells as base 0
                # (of_read_number of no cells): every /memory entry would be RAM at
                # address 0, which no VMM means.
                raise _err(
                    file,
                    "/: #address-cells = <0>: Linux would read every /memory entry as RAM "
                    "at address 0; state the root's real #address-cells",
                )
            bus = _Bus(path, ac, sc, (), None)
            root_cells = (ac, sc)
        else:
            raw_ranges = _getprop(buf, off, "ranges")
            if depth == 1 and reserved_path is None and _named(name, "reserved-memory"):
                reserved_path = path
            if parent.ranges is None:
                bus = _Bus(path, ac, sc, None, parent, parent.why_not)
            elif raw_ranges is None:
                bus = _Bus(path, ac, sc, None, parent, f"{path} has no ranges: not memory-mapped")
            elif not raw_ranges or path == reserved_path:
                # Linux reads /reserved-memory children's reg as root addresses
                # (__reserved_mem_reserve_reg uses dt_root_addr_cells and no ranges):
                # its ranges only has to exist, its content is never applied.
                bus = _Bus(path, ac, sc, (), parent)
            else:
                decoded = _decode_ranges(
                    file, path, raw_ranges, ac, parent.address_cells, sc, budget
                )
                bus = _Bus(path, ac, sc, decoded, parent)
                for i, (_child, base, length) in enumerate(decoded):
                    if length == 0:
                        continue
                    translated = _translate(parent, base, budget)
                    if translated is not None:
                        windows.append(RegEntry(path, i, Range(translated, length), prop="ranges"))
            if path == reserved_path:
                explicit = all(
                    _getprop(buf, off, p) is not None for p in ("#address-cells", "#size-cells")
                )
                if not explicit:
                    reserved_ignored = f"{path} does not state #address-cells and #size-cells"
                elif (ac, sc) != root_cells:
                    reserved_ignored = (
                        f"{path} has #address-cells/#size-cells {ac}/{sc}, the root has "
                        f"{root_cells[0]}/{root_cells[1]}"
                    )
                elif raw_ranges is None:
                    reserved_ignored = f"{path} has no ranges property"
        stack.append(bus)
        if depth == 1 and chosen_path is None and _named(name, "chosen"):
            chosen_path = path
            usable_range = _usable_range(
                _getprop(buf, off, "linux,usable-memory-range"), root_cells
            )
            initrd = _initrd(
                _getprop(buf, off, "linux,initrd-start"), _getprop(buf, off, "linux,initrd-end")
            )
        raw_reg = _getprop(buf, off, "reg") if parent is not None else None
        device_type = _getprop(buf, off, "device_type")
        is_memory = first_string(device_type) == "memory"
        if (
            not is_memory
            and device_type is not None
            and raw_reg is not None
            and len(raw_reg) == 16
            and pei_type_matches(device_type)
        ):
            memory_nodes.append(
                MemoryNode(
                    path=path,
                    depth=depth,
                    available=_available(_getprop(buf, off, "status")),
                    reg=(),
                    usable=None,
                    raw_reg=(Range(*_lenient_pairs(raw_reg, 2, 2)[0]),),
                    numa_node=None,
                    pei_only=True,
                )
            )
        if is_memory and parent is not None:
            memory_nodes.append(
                _memory_node(
                    buf, off, file, path, depth, raw_reg, parent, skipped, budget, root_cells
                )
            )
            memory.extend(memory_nodes[-1].reg)
        elif raw_reg is not None and parent is not None:
            entries = _decode_reg(file, path, raw_reg, parent, skipped, budget)
            if depth == 2 and parent.path == reserved_path:
                status = _getprop(buf, off, "status")
                if not _available(status):
                    # of_fdt_device_is_available: Linux skips the child entirely.
                    skipped.append(Skipped(path, "status is not okay: Linux ignores it"))
                else:
                    no_map = _getprop(buf, off, "no-map") is not None
                    reusable = _getprop(buf, off, "reusable") is not None
                    claimed = _getprop(buf, off, "compatible") is not None
                    reserved.extend(
                        Reservation(path, i, r, no_map, reusable, claimed) for i, r in entries
                    )
            else:
                devices.extend(RegEntry(path, i, r) for i, r in entries)
        off, depth = libfdt.fdt_next_node(buf, off, depth)
    if off < 0 and off != -libfdt.NOTFOUND:
        raise _err(file, f"corrupt DTB: {libfdt.fdt_strerror(off)}")
    return DeviceTree(
        file=file,
        node_count=count,
        memory=tuple(memory),
        reserved=tuple(reserved),
        reserved_ignored=reserved_ignored,
        memreserve=_memreserve(buf, file),
        devices=tuple(devices),
        skipped=tuple(skipped),
        windows=tuple(windows),
        root_cells=root_cells,
        memory_nodes=tuple(memory_nodes),
        usable_memory_range=usable_range,
        chosen=chosen_path,
        initrd=initrd,
    )


def _initrd(start: bytes | None, end: bytes | None) -> Range | None:
    """``/chosen`` ``linux,initrd-start``/``-end`` as ``early_init_dt_check_for_initrd`` reads them.

    Each is ``of_read_number(prop, len / 4)`` (all its cells, the low 64 bits);
    both must exist and ``start <= end``, else there is no initrd.
    """
    if start is None or end is None:
        return None
    lo = _int_cells(start, 0, len(start) // 4)
    hi = _int_cells(end, 0, len(end) // 4)
    return None if lo > hi else Range(lo, hi - lo)


def _usable_range(raw: bytes | None, root_cells: tuple[int, int]) -> tuple[Range, ...] | None:
    """``linux,usable-memory-range`` as ``early_init_dt_check_for_usable_mem_range`` reads it.

    Ignored unless its length (in bytes) is a multiple of the root's address+size
    cell count (the kernel's own test); at most ``MAX_USABLE_RANGES`` (2) ranges,
    root cells, each number the low 64 bits.
    """
    ac, sc = root_cells
    if raw is None or ac + sc == 0 or len(raw) % (ac + sc):
        return None
    width = 4 * (ac + sc)
    out: list[Range] = []
    for pos in range(0, len(raw) - width + 1, width):
        if len(out) == 2:
            break
        out.append(Range(_int_cells(raw, pos, ac), _int_cells(raw, pos + 4 * ac, sc)))
    return tuple(out)


def _lenient_pairs(raw: bytes, ac: int, sc: int) -> list[tuple[int, int]]:
    """(address, size) pairs while a whole pair remains (``early_init_dt_scan_memory``'s loop)."""
    width = 4 * (ac + sc)
    if width == 0:
        return []
    return [
        (_int_cells(raw, pos, ac), _int_cells(raw, pos + 4 * ac, sc))
        for pos in range(0, len(raw) - width + 1, width)
    ]


def _memory_node(
    buf: bytearray,
    off: int,
    file: str,
    path: str,
    depth: int,
    raw_reg: bytes | None,
    parent: _Bus,
    skipped: list[Skipped],
    budget: _Budget,
    root_cells: tuple[int, int],
) -> MemoryNode:
    raw_node = _getprop(buf, off, "numa-node-id")
    if raw_node is not None and len(raw_node) != 4:
        raise _err(file, f"{path}: numa-node-id must be one u32 cell")
    node = int.from_bytes(raw_node, "big") if raw_node is not None else None
    reg: tuple[RegEntry, ...] = ()
    if raw_reg is not None:
        entries = _decode_reg(file, path, raw_reg, parent, skipped, budget)
        reg = tuple(RegEntry(path, i, r, node) for i, r in entries)
    raw_usable = _getprop(buf, off, "linux,usable-memory")
    usable = None
    if raw_usable is not None:
        pairs = _lenient_pairs(raw_usable, *root_cells)
        budget.take_entries(len(pairs))
        usable = tuple(
            RegEntry(path, i, Range(a, n), node, "linux,usable-memory")
            for i, (a, n) in enumerate(pairs)
            if n
        )
    edk2 = None
    if raw_reg is not None and len(raw_reg) % 16 == 0:
        pairs = _lenient_pairs(raw_reg, 2, 2)
        budget.take_entries(len(pairs))
        edk2 = tuple(Range(a, n) for a, n in pairs)
    status = _getprop(buf, off, "status")
    return MemoryNode(
        path=path,
        depth=depth,
        available=_available(status),
        reg=reg,
        usable=usable,
        raw_reg=edk2,
        numa_node=node,
    )


def _decode_reg(
    file: str, path: str, raw: bytes, parent: _Bus, skipped: list[Skipped], budget: _Budget
) -> Sequence[tuple[int, Range]]:
    ac, sc = parent.address_cells, parent.size_cells
    if sc == 0 or ac == 0:
        skipped.append(
            Skipped(path, f"parent {parent.path} has #address-cells/#size-cells {ac}/{sc}")
        )
        return ()
    width = 4 * (ac + sc)
    if not raw or len(raw) % width:
        raise _err(
            file,
            f"{path}: reg is {len(raw)} bytes, not a multiple of {ac}+{sc} cells "
            f"(the parent's #address-cells/#size-cells)",
        )
    if parent.ranges is None:
        skipped.append(Skipped(path, parent.why_not))
        return ()
    budget.take_entries(len(raw) // width)
    out = []
    for pos in range(0, len(raw), width):
        addr = _int_cells(raw, pos, ac)
        size = _int_cells(raw, pos + 4 * ac, sc)
        if size == 0:
            continue
        translated = _translate(parent, addr, budget)
        if translated is None:
            skipped.append(
                Skipped(
                    path, f"reg[{pos // width}] {addr:#x} lies in no window of a parent's ranges"
                )
            )
            continue
        out.append((pos // width, Range(translated, size)))
    return out


def load(path: str | Path) -> DeviceTree:
    """Read and decode a DTB file (refused by size before it is read, see :mod:`inputs`)."""
    return parse(read_bounded(path, MAX_DTB_BYTES, DTError, "DTBs"), display_name(path))
