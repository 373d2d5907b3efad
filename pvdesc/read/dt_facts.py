"""The address facts pvdesc reads from a DTB: reg entries, reservations, memory nodes, the tree.

Each entry that names a guest-physical range holds the shared
:class:`~pvdesc.core.ranges.Labelled` (its range, the label findings give it, and a
memory node's NUMA id) and adds only what is devicetree-specific: the node's path,
the property and the entry's index.  Which of these facts each boot consumer
believes is :mod:`pvdesc.layout.beliefs`'s job.
"""

from __future__ import annotations

from typing import NamedTuple

from pvdesc.core.ranges import Labelled, Range
from pvdesc.read.fdt_blob import DEFAULT_ADDRESS_CELLS, DEFAULT_SIZE_CELLS
from pvdesc.read.of_address import Skipped


class _HoldsLabelled:
    """Reads of the held :class:`Labelled`: ``range``, ``source`` (its label), ``numa_node``.

    A mixin after a record's fields (a :class:`NamedTuple` base): no slots of its own,
    so the record stays a plain tuple.
    """

    __slots__ = ()

    labelled: Labelled

    @property
    def range(self) -> Range:
        """The translated guest-physical range."""
        return self.labelled.range

    @property
    def source(self) -> str:
        """How findings name it, e.g. ``/memory@40000000 reg[0]``."""
        return self.labelled.label

    @property
    def numa_node(self) -> int | None:
        """A memory node's ``numa-node-id``, else ``None``."""
        return self.labelled.numa_node


class _RegEntryFields(NamedTuple):
    """The fields of :class:`RegEntry`, which documents them."""

    path: str
    index: int  # type: ignore[assignment]  # shadows tuple.index, which no caller uses
    labelled: Labelled
    prop: str = "reg"


class RegEntry(_RegEntryFields, _HoldsLabelled):
    """One ``reg`` entry (or ``ranges`` window) of a node, translated to the root's address space.

    Attributes:
        path: the node's full path, e.g. ``/memory@40000000``.
        index: the entry's position in the property (0-based).
        labelled: the translated range, labelled ``PATH PROP[INDEX]``, with a memory
            node's ``numa-node-id`` (one u32 cell), else ``None``.
        prop: the property it comes from: ``reg``, ``linux,usable-memory``, or
            ``ranges`` for a bus window.
    """

    __slots__ = ()

    @classmethod
    def at(
        cls, path: str, index: int, range_: Range, numa_node: int | None = None, prop: str = "reg"
    ) -> RegEntry:
        """Entry ``index`` of ``path``'s ``prop``, labelled ``/memory@40000000 reg[0]``."""
        return cls(path, index, Labelled(range_, f"{path} {prop}[{index}]", numa_node), prop)


class _ReservationFields(NamedTuple):
    """The fields of :class:`Reservation`, which documents them."""

    entry: RegEntry
    no_map: bool
    reusable: bool
    compatible: bool = False


class Reservation(_ReservationFields, _HoldsLabelled):
    """A static ``/reserved-memory`` child (one with ``reg``) that Linux honours.

    A child whose ``status`` is not ``okay``/``ok`` is skipped (listed in
    :attr:`DeviceTree.skipped`), as Linux's ``fdt_scan_reserved_mem`` skips it.

    Attributes:
        entry: its ``reg`` entry (the binding allows one; more are read anyway).
        no_map: the ``no-map`` property is present: dropped from the linear map.
        reusable: the ``reusable`` property is present: the OS may allocate it.
        compatible: the ``compatible`` property is present: a kernel driver claims
            the range (``fdt_init_reserved_mem_node``, drivers/of/of_reserved_mem.c:
            an init function that fails, as ``restricted-dma-pool`` does with
            ``no-map``, makes it ``memblock_clear_nomap`` it back into RAM; one that
            succeeds, as ``shared-dma-pool``, hands it out for DMA buffers).
    """

    __slots__ = ()

    @property
    def labelled(self) -> Labelled:  # type: ignore[override]
        """The entry's labelled range."""
        return self.entry.labelled

    @property
    def path(self) -> str:
        """The child's full path."""
        return self.entry.path

    @property
    def index(self) -> int:  # type: ignore[override]  # shadows tuple.index, which no caller uses
        """The ``reg`` entry's position."""
        return self.entry.index

    @property
    def withheld(self) -> bool:
        """``no-map``, not ``reusable``, no ``compatible``: the OS neither maps nor uses it."""
        return self.no_map and not self.reusable and not self.compatible


class MemoryNode(NamedTuple):
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
            (see :func:`pvdesc.read.fdt_blob.pei_type_matches`); ``reg`` and ``usable``
            are then empty.
    """

    path: str
    depth: int
    available: bool
    reg: tuple[RegEntry, ...]
    usable: tuple[RegEntry, ...] | None
    raw_reg: tuple[Range, ...] | None
    numa_node: int | None
    pei_only: bool = False


class _MemReserveFields(NamedTuple):
    """The fields of :class:`MemReserve`, which documents them."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, which no caller uses
    labelled: Labelled


class MemReserve(_MemReserveFields, _HoldsLabelled):
    """One entry of the header's memory reservation block (``/memreserve/``).

    Attributes:
        index: position in the block.
        labelled: address and size, labelled ``/memreserve/[INDEX]``.
    """

    __slots__ = ()

    @classmethod
    def at(cls, index: int, range_: Range) -> MemReserve:
        """Entry ``index`` of the block."""
        return cls(index, Labelled(range_, f"/memreserve/[{index}]"))


class DeviceTree(NamedTuple):
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
