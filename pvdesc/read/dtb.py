"""Walk an untrusted DTB once with libfdt and collect its address facts into a DeviceTree.

The blob is opened by :mod:`pvdesc.read.fdt_blob` (size, header, ``fdt_check_full``);
``reg`` and ``ranges`` are decoded and translated by :mod:`pvdesc.read.of_address`;
the facts are the types of :mod:`pvdesc.read.dt_facts`, re-exported here.  This
module decides which node is which, as Linux and EDK2 find them:

- the root must state ``#address-cells``: without it Linux's flat-tree code
  assumes 1 (``OF_ROOT_NODE_ADDR_CELLS_DEFAULT``, drivers/of/of_private.h) where
  the DT spec says 2, so ``/memory`` could not be read the way the guest reads it;
- ``/reserved-memory`` is honoured only with ``#address-cells``, ``#size-cells``
  (both present and equal to the root's) and ``ranges`` (present):
  ``__reserved_mem_check_root`` in drivers/of/fdt.c, docs/pvtime-and-dt.md §4;
  its children's ``reg`` are root addresses whatever ``ranges`` holds (Linux
  never applies it), and a child whose ``status`` is not ``okay`` is skipped;
- ``/reserved-memory`` and ``/chosen`` are found as libfdt's ``fdt_path_offset``
  finds them: the first root child with that name, with or without a unit address;
- memory nodes are recorded with the facts each consumer reads
  (:class:`MemoryNode`); which of them are RAM for which boot mode is
  :mod:`pvdesc.layout.beliefs`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import _libfdt

from pvdesc.core.ranges import Range
from pvdesc.errors import DTError
from pvdesc.read.dt_facts import DeviceTree, MemoryNode, MemReserve, RegEntry, Reservation
from pvdesc.read.fdt_blob import (
    DEFAULT_ADDRESS_CELLS,
    DEFAULT_SIZE_CELLS,
    FDT_HEADER_SIZE,
    MAX_DEPTH,
    MAX_DTB_BYTES,
    MAX_NODES,
    available,
    cells,
    err,
    first_string,
    getprop,
    mem_reserve_block,
    named,
    open_blob,
    pei_type_matches,
)
from pvdesc.read.of_address import (
    Budget,
    Bus,
    Skipped,
    decode_ranges,
    decode_reg,
    int_cells,
    lenient_pairs,
    translate,
)
from pvdesc.tools.inputs import display_name, read_bounded_buffer

__all__ = [
    "FDT_HEADER_SIZE",
    "MAX_DEPTH",
    "MAX_DTB_BYTES",
    "DeviceTree",
    "MemReserve",
    "MemoryNode",
    "RegEntry",
    "Reservation",
    "Skipped",
    "first_string",
    "load",
    "parse",
    "pei_type_matches",
]


def parse(data: bytes | bytearray, file: str = "<dtb>") -> DeviceTree:
    """Check and decode a DTB.  Raises :class:`DTError` (one line, naming ``file``)."""
    buf = open_blob(data, file)
    try:
        return _walk(buf, file)
    except UnicodeDecodeError as exc:
        raise err(file, f"corrupt DTB: {exc}") from None


def _walk(buf: bytearray, file: str) -> DeviceTree:
    """Visit every node once (``fdt_next_node``), bounded, and collect the facts.

    The next node is found first, so a leaf (most nodes: CPUs, devices) makes no bus.
    """
    memory: list[RegEntry] = []
    reserved: list[Reservation] = []
    devices: list[RegEntry] = []
    skipped: list[Skipped] = []
    windows: list[RegEntry] = []
    budget = Budget(file, [0], [0])
    reserved_ignored: str | None = None
    memory_nodes: list[MemoryNode] = []
    # fdt_path_offset("/reserved-memory") and ("/chosen"): the first root child so named.
    reserved_path: str | None = None
    chosen_path: str | None = None
    usable_range: tuple[Range, ...] | None = None
    initrd: Range | None = None
    prop, next_node, get_name = _libfdt.fdt_getprop, _libfdt.fdt_next_node, _libfdt.fdt_get_name
    max_nodes = MAX_NODES
    root = _root_bus(buf, file)
    root_cells = (root.address_cells, root.size_cells)
    # stack[d] is the bus of the node at depth d (the parent of nodes at depth d+1);
    # a node is pushed only when it has children.
    stack: list[Bus] = [root]
    count = 1
    # fdt_next_node reports leaving the root with depth -1 (libfdt fdt.c).
    off, depth = next_node(buf, 0, 0)
    while off >= 0 and depth >= 0:
        count += 1
        if count > max_nodes:
            raise err(file, f"more than {max_nodes} nodes: refusing to audit a tree this large")
        if depth > MAX_DEPTH:
            raise err(file, f"nodes nested deeper than {MAX_DEPTH} levels (Linux's FDT_MAX_DEPTH)")
        following, following_depth = next_node(buf, off, depth)
        del stack[depth:]
        parent = stack[-1]
        name = get_name(buf, off)[0]
        path = f"{parent.path.rstrip('/')}/{name}"
        raw = prop(buf, off, "#address-cells")[0]
        ac = DEFAULT_ADDRESS_CELLS if raw is None else cells(file, path, "#address-cells", raw, 0)
        raw = prop(buf, off, "#size-cells")[0]
        sc = DEFAULT_SIZE_CELLS if raw is None else cells(file, path, "#size-cells", raw, 0)
        raw_ranges = prop(buf, off, "ranges")[0]
        if depth == 1 and reserved_path is None and named(name, "reserved-memory"):
            reserved_path = path
        is_reserved = path == reserved_path
        # A leaf without ranges needs no bus: nothing below it, no window, nothing to check.
        if following_depth > depth or (raw_ranges is not None and parent.ranges is not None):
            bus = _child_bus(file, path, (ac, sc), raw_ranges, parent, is_reserved, budget)
            if bus.ranges:
                windows.extend(_windows(path, bus, budget))
            if following_depth > depth:
                stack.append(bus)
        if is_reserved:
            reserved_ignored = _reserved_ignored(buf, off, path, (ac, sc), root_cells)
        if depth == 1 and chosen_path is None and named(name, "chosen"):
            chosen_path = path
            usable_range = _usable_range(getprop(buf, off, "linux,usable-memory-range"), root_cells)
            initrd = _initrd(
                getprop(buf, off, "linux,initrd-start"), getprop(buf, off, "linux,initrd-end")
            )
        raw_reg = prop(buf, off, "reg")[0]
        device_type = prop(buf, off, "device_type")[0]
        # first_string(device_type) == "memory", read without decoding it (half the nodes)
        if device_type is not None and device_type[:7] in (b"memory", b"memory\0"):
            node = _memory_node(
                buf, off, file, path, depth, raw_reg, parent, skipped, budget, root_cells
            )
            memory_nodes.append(node)
            memory.extend(node.reg)
        elif raw_reg is not None:
            if device_type is not None and len(raw_reg) == 16:
                pei = _pei_only_node(buf, off, path, depth, device_type, raw_reg)
                if pei is not None:
                    memory_nodes.append(pei)
            entries = decode_reg(file, path, raw_reg, parent, skipped, budget)
            if depth == 2 and parent.path == reserved_path:
                _reservations(buf, off, path, entries, reserved, skipped)
            else:
                for i, r in entries:
                    devices.append(RegEntry.at(path, i, r))
        off, depth = following, following_depth
    if off < 0 and off != -_libfdt.FDT_ERR_NOTFOUND:
        raise err(file, f"corrupt DTB: {_libfdt.fdt_strerror(off)}")
    return DeviceTree(
        file=file,
        node_count=count,
        memory=tuple(memory),
        reserved=tuple(reserved),
        reserved_ignored=reserved_ignored,
        memreserve=tuple(
            MemReserve.at(i, Range(a, n)) for i, (a, n) in enumerate(mem_reserve_block(buf, file))
        ),
        devices=tuple(devices),
        skipped=tuple(skipped),
        windows=tuple(windows),
        root_cells=root_cells,
        memory_nodes=tuple(memory_nodes),
        usable_memory_range=usable_range,
        chosen=chosen_path,
        initrd=initrd,
    )


def _root_bus(buf: bytearray, file: str) -> Bus:
    """The root's bus (offset 0): its cells, checked; its children's addresses are root ones."""
    ac = cells(
        file, "/", "#address-cells", getprop(buf, 0, "#address-cells"), DEFAULT_ADDRESS_CELLS
    )
    sc = cells(file, "/", "#size-cells", getprop(buf, 0, "#size-cells"), DEFAULT_SIZE_CELLS)
    _check_root(buf, 0, file, ac)
    return Bus("/", ac, sc, (), None)


def _reservations(
    buf: bytearray,
    off: int,
    path: str,
    entries: Sequence[tuple[int, Range]],
    reserved: list[Reservation],
    skipped: list[Skipped],
) -> None:
    """A ``/reserved-memory`` child's entries, unless Linux skips the child (``status``)."""
    if not available(getprop(buf, off, "status")):
        # of_fdt_device_is_available: Linux skips the child entirely.
        skipped.append(Skipped(path, "status is not okay: Linux ignores it"))
        return
    no_map = getprop(buf, off, "no-map") is not None
    reusable = getprop(buf, off, "reusable") is not None
    claimed = getprop(buf, off, "compatible") is not None
    reserved.extend(
        Reservation(RegEntry.at(path, i, r), no_map, reusable, claimed) for i, r in entries
    )


def _check_root(buf: bytearray, off: int, file: str, ac: int) -> None:
    """Refuse a root whose ``#address-cells`` leaves ``/memory`` ambiguous or meaningless."""
    if getprop(buf, off, "#address-cells") is None:
        raise err(
            file,
            "/: no #address-cells: Linux then reads /memory with 1 address cell, the DT "
            "spec with 2, so the guest's RAM is ambiguous; state #address-cells and "
            "#size-cells on the root",
        )
    if ac == 0:
        # early_init_dt_scan_memory reads 0 address cells as base 0
        # (of_read_number of no cells): every /memory entry would be RAM at
        # address 0, which no VMM means.
        raise err(
            file,
            "/: #address-cells = <0>: Linux would read every /memory entry as RAM "
            "at address 0; state the root's real #address-cells",
        )


def _child_bus(
    file: str,
    path: str,
    node_cells: tuple[int, int],
    raw_ranges: bytes | None,
    parent: Bus,
    is_reserved_memory: bool,
    budget: Budget,
) -> Bus:
    """A non-root node's bus: its cells and how its children's addresses reach the root."""
    ac, sc = node_cells
    if parent.ranges is None:
        return Bus(path, ac, sc, None, parent, parent.why_not)
    if raw_ranges is None:
        return Bus(path, ac, sc, None, parent, f"{path} has no ranges: not memory-mapped")
    if not raw_ranges or is_reserved_memory:
        # Linux reads /reserved-memory children's reg as root addresses
        # (__reserved_mem_reserve_reg uses dt_root_addr_cells and no ranges):
        # its ranges only has to exist, its content is never applied.
        return Bus(path, ac, sc, (), parent)
    decoded = decode_ranges(file, path, raw_ranges, ac, parent.address_cells, sc, budget)
    return Bus(path, ac, sc, decoded, parent)


def _windows(path: str, bus: Bus, budget: Budget) -> list[RegEntry]:
    """The bus's non-empty ``ranges`` windows that translate, as root addresses."""
    out: list[RegEntry] = []
    if not bus.ranges or bus.parent is None:
        return out
    for i, (_child, base, length) in enumerate(bus.ranges):
        if length == 0:
            continue
        translated = translate(bus.parent, base, budget)
        if translated is not None:
            out.append(RegEntry.at(path, i, Range(translated, length), prop="ranges"))
    return out


def _reserved_ignored(
    buf: bytearray, off: int, path: str, node_cells: tuple[int, int], root_cells: tuple[int, int]
) -> str | None:
    """Why Linux ignores ``/reserved-memory`` (``__reserved_mem_check_root``), else ``None``."""
    explicit = all(getprop(buf, off, p) is not None for p in ("#address-cells", "#size-cells"))
    if not explicit:
        return f"{path} does not state #address-cells and #size-cells"
    if node_cells != root_cells:
        ac, sc = node_cells
        return (
            f"{path} has #address-cells/#size-cells {ac}/{sc}, the root has "
            f"{root_cells[0]}/{root_cells[1]}"
        )
    if getprop(buf, off, "ranges") is None:
        return f"{path} has no ranges property"
    return None


def _pei_only_node(
    buf: bytearray, off: int, path: str, depth: int, device_type: bytes, raw_reg: bytes
) -> MemoryNode | None:
    """A node only EDK2's PEI scan takes for memory (see :attr:`MemoryNode.pei_only`)."""
    if len(raw_reg) != 16 or not pei_type_matches(device_type):
        return None
    return MemoryNode(
        path=path,
        depth=depth,
        available=available(getprop(buf, off, "status")),
        reg=(),
        usable=None,
        raw_reg=(Range(*lenient_pairs(raw_reg, 2, 2)[0]),),
        numa_node=None,
        pei_only=True,
    )


def _initrd(start: bytes | None, end: bytes | None) -> Range | None:
    """``/chosen`` ``linux,initrd-start``/``-end`` as ``early_init_dt_check_for_initrd`` reads them.

    Each is ``of_read_number(prop, len / 4)`` (all its cells, the low 64 bits);
    both must exist and ``start <= end``, else there is no initrd.
    """
    if start is None or end is None:
        return None
    lo = int_cells(start, 0, len(start) // 4)
    hi = int_cells(end, 0, len(end) // 4)
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
        out.append(Range(int_cells(raw, pos, ac), int_cells(raw, pos + 4 * ac, sc)))
    return tuple(out)


def _memory_node(
    buf: bytearray,
    off: int,
    file: str,
    path: str,
    depth: int,
    raw_reg: bytes | None,
    parent: Bus,
    skipped: list[Skipped],
    budget: Budget,
    root_cells: tuple[int, int],
) -> MemoryNode:
    raw_node = getprop(buf, off, "numa-node-id")
    if raw_node is not None and len(raw_node) != 4:
        raise err(file, f"{path}: numa-node-id must be one u32 cell")
    node = int.from_bytes(raw_node, "big") if raw_node is not None else None
    reg: tuple[RegEntry, ...] = ()
    if raw_reg is not None:
        entries = decode_reg(file, path, raw_reg, parent, skipped, budget)
        reg = tuple(RegEntry.at(path, i, r, node) for i, r in entries)
    raw_usable = getprop(buf, off, "linux,usable-memory")
    usable = None
    if raw_usable is not None:
        pairs = lenient_pairs(raw_usable, *root_cells)
        budget.take_entries(len(pairs))
        usable = tuple(
            RegEntry.at(path, i, Range(a, n), node, "linux,usable-memory")
            for i, (a, n) in enumerate(pairs)
            if n
        )
    edk2 = None
    if raw_reg is not None and len(raw_reg) % 16 == 0:
        pairs = lenient_pairs(raw_reg, 2, 2)
        budget.take_entries(len(pairs))
        edk2 = tuple(Range(a, n) for a, n in pairs)
    status = getprop(buf, off, "status")
    return MemoryNode(
        path=path,
        depth=depth,
        available=available(status),
        reg=reg,
        usable=usable,
        raw_reg=edk2,
        numa_node=node,
    )


def load(path: str | PathLike[str]) -> DeviceTree:
    """Read and decode a DTB file (refused by size before it is read, see :mod:`inputs`)."""
    return parse(read_bounded_buffer(path, MAX_DTB_BYTES, DTError, "DTBs"), display_name(path))
