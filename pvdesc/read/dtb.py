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

from pathlib import Path

import libfdt

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
from pvdesc.tools.inputs import display_name, read_bounded

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


def parse(data: bytes, file: str = "<dtb>") -> DeviceTree:
    """Check and decode a DTB.  Raises :class:`DTError` (one line, naming ``file``)."""
    buf = open_blob(data, file)
    try:
        return _walk(buf, file)
    except (libfdt.FdtException, UnicodeDecodeError) as exc:
        raise err(file, f"corrupt DTB: {exc}") from None


def _walk(buf: bytearray, file: str) -> DeviceTree:
    """Visit every node once (``fdt_next_node``), bounded, and collect the facts."""
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
    root_cells = (0, 0)
    # stack[d] is the bus of the node at depth d (the parent of nodes at depth d+1).
    stack: list[Bus] = []
    off, depth = 0, 0
    count = 0
    # fdt_next_node reports leaving the root with depth -1 (libfdt fdt.c).
    while off >= 0 and depth >= 0:
        count += 1
        if count > MAX_NODES:
            raise err(file, f"more than {MAX_NODES} nodes: refusing to audit a tree this large")
        if depth > MAX_DEPTH:
            raise err(file, f"nodes nested deeper than {MAX_DEPTH} levels (Linux's FDT_MAX_DEPTH)")
        del stack[depth:]
        parent = stack[-1] if stack else None
        name = libfdt.fdt_get_name(buf, off)[0]
        path = "/" if parent is None else f"{parent.path.rstrip('/')}/{name}"
        ac = cells(
            file,
            path,
            "#address-cells",
            getprop(buf, off, "#address-cells"),
            DEFAULT_ADDRESS_CELLS,
        )
        sc = cells(file, path, "#size-cells", getprop(buf, off, "#size-cells"), DEFAULT_SIZE_CELLS)
        if parent is None:
            _check_root(buf, off, file, ac)
            bus = Bus(path, ac, sc, (), None)
            root_cells = (ac, sc)
        else:
            raw_ranges = getprop(buf, off, "ranges")
            if depth == 1 and reserved_path is None and named(name, "reserved-memory"):
                reserved_path = path
            bus = _child_bus(
                file, path, (ac, sc), raw_ranges, parent, path == reserved_path, budget
            )
            windows.extend(_windows(path, bus, budget))
            if path == reserved_path:
                reserved_ignored = _reserved_ignored(buf, off, path, (ac, sc), root_cells)
        stack.append(bus)
        if depth == 1 and chosen_path is None and named(name, "chosen"):
            chosen_path = path
            usable_range = _usable_range(getprop(buf, off, "linux,usable-memory-range"), root_cells)
            initrd = _initrd(
                getprop(buf, off, "linux,initrd-start"), getprop(buf, off, "linux,initrd-end")
            )
        raw_reg = getprop(buf, off, "reg") if parent is not None else None
        device_type = getprop(buf, off, "device_type")
        is_memory = first_string(device_type) == "memory"
        if not is_memory and device_type is not None and raw_reg is not None:
            pei = _pei_only_node(buf, off, path, depth, device_type, raw_reg)
            if pei is not None:
                memory_nodes.append(pei)
        if is_memory and parent is not None:
            memory_nodes.append(
                _memory_node(
                    buf, off, file, path, depth, raw_reg, parent, skipped, budget, root_cells
                )
            )
            memory.extend(memory_nodes[-1].reg)
        elif raw_reg is not None and parent is not None:
            entries = decode_reg(file, path, raw_reg, parent, skipped, budget)
            if depth == 2 and parent.path == reserved_path:
                status = getprop(buf, off, "status")
                if not available(status):
                    # of_fdt_device_is_available: Linux skips the child entirely.
                    skipped.append(Skipped(path, "status is not okay: Linux ignores it"))
                else:
                    no_map = getprop(buf, off, "no-map") is not None
                    reusable = getprop(buf, off, "reusable") is not None
                    claimed = getprop(buf, off, "compatible") is not None
                    reserved.extend(
                        Reservation(RegEntry.at(path, i, r), no_map, reusable, claimed)
                        for i, r in entries
                    )
            else:
                devices.extend(RegEntry.at(path, i, r) for i, r in entries)
        off, depth = libfdt.fdt_next_node(buf, off, depth)
    if off < 0 and off != -libfdt.NOTFOUND:
        raise err(file, f"corrupt DTB: {libfdt.fdt_strerror(off)}")
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


def load(path: str | Path) -> DeviceTree:
    """Read and decode a DTB file (refused by size before it is read, see :mod:`inputs`)."""
    return parse(read_bounded(path, MAX_DTB_BYTES, DTError, "DTBs"), display_name(path))
