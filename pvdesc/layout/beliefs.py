"""What each boot consumer believes about guest memory: the one model every check uses.

A guest learns its RAM from one consumer of the firmware description, chosen by
the boot mode:

- ``linux-dt``: Linux reads the devicetree itself (drivers/of/fdt.c);
- ``uefi-dt`` and ``uefi-acpi``: EDK2 builds the UEFI memory map from the
  devicetree's memory nodes, uses that RAM itself before the OS starts, and the
  OS then takes its RAM from that map (the arm64 EFI stub deletes the DT's memory
  nodes, drivers/firmware/efi/libstub/fdt.c ``update_fdt``).

:func:`believe` turns a parsed devicetree (:mod:`pvdesc.read.dtb`) and optional ACPI
tables into a :class:`Belief`: the RAM the consumer adds, the reservations it
honours (no-map or mapped), ``/memreserve/`` and the device windows (``reg``
translated, and bus ``ranges`` windows such as a PCI host bridge's MMIO, where
Linux hands out BARs).  :func:`of_layout` gives the same for a layout pvdesc
allocated.  :mod:`pvdesc.audit.check`'s rules judge a :class:`Belief`, whatever it
came from, so ``layout.verify``, ``check``, ``build --into`` and ``map --dtb``
agree.  Each rule below names the function it mirrors.

Linux (``linux-dt``):

- memory: ``early_init_dt_scan_memory`` (drivers/of/fdt.c) visits the root's
  children only (``fdt_for_each_subnode(node, fdt, 0)``), keeps those whose
  ``device_type`` ``strcmp``-equals ``"memory"`` (the first string of a list),
  skips unavailable ones (``of_fdt_device_is_available``), reads
  ``linux,usable-memory`` *instead of* ``reg`` when present, with the root's
  cells, and skips zero sizes; ``early_init_dt_add_memory_arch`` trims each
  entry to whole pages (:func:`add_memory_arch`);
- ``/chosen`` ``linux,usable-memory-range``
  (``early_init_dt_check_for_usable_mem_range``): the first range caps memory
  (``memblock_cap_memory_range``, a no-op for size 0), a second is added as
  memory (``memblock_add``);
- ``/reserved-memory`` (``fdt_scan_reserved_mem``): found by
  ``fdt_path_offset``, so ``/reserved-memory@0`` counts; ignored unless
  ``__reserved_mem_check_root`` holds; available children only; ``no-map``
  marks the range nomap, except that ``early_init_dt_reserve_memory`` refuses
  (``-EBUSY``) a no-map range that overlaps memory and something already
  reserved (``/memreserve/``, the initrd or an earlier mapped child), leaving it
  plain RAM; without ``no-map`` the range is reserved but stays mapped.
  ``reusable`` is treated as mapped: the OS may hand it out; so is a child with a
  ``compatible``, which a driver claims (``fdt_init_reserved_mem_node``,
  drivers/of/of_reserved_mem.c: a failing init function clears nomap, a
  succeeding one uses the range);
- ``/memreserve/`` (``early_init_fdt_scan_reserved_mem``): ``memblock_reserve``,
  still mapped;
- ``/chosen`` ``linux,initrd-start``/``-end``: ``arm64_memblock_init`` adds the
  initrd's pages as memory, freed to the page allocator after boot
  (:func:`initrd_memory`).

Under ``uefi-dt`` the OS also reads the DT's ``/chosen`` (the EFI stub keeps it):
the second ``linux,usable-memory-range`` range is added by ``efi_init`` and the
initrd by ``arm64_memblock_init``, on top of the UEFI map's RAM.

EDK2 (``uefi-dt``, ``uefi-acpi``):

- ``FindNextMemoryNodeReg`` (EmbeddedPkg/Drivers/FdtClientDxe/FdtClientDxe.c),
  used by ``InitializeHighMemDxe`` (OvmfPkg/Fdt/HighMemDxe/HighMemDxe.c), walks
  *every* node (``fdt_next_node``), matches ``device_type`` with ``AsciiStrCmp``
  (the first string), skips disabled nodes (``IsNodeEnabled``) and reads ``reg``
  as (u64, u64) pairs whatever the cells, ignoring a ``reg`` that is not a
  multiple of 16 bytes; ``linux,usable-memory`` is never read;
- ``QemuVirtMemInfoPeiLibConstructor``
  (ArmVirtPkg/Library/QemuVirtMemInfoLib/QemuVirtMemInfoPeiLibConstructor.c)
  takes the lowest memory node with a 16-byte ``reg`` as the initial system
  memory *without* looking at ``status``;
- ``/reserved-memory`` and ``/memreserve/`` do not keep EDK2 off a range (measured:
  EDK2 put Boot Data and Conventional memory over a no-map child), so they are
  kept only to name them in findings.

Devices are the same for every boot: every other ``reg`` and every non-empty
``ranges`` window, translated by its start address (``of_translate_address``).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pvdesc.core.model import Boot
from pvdesc.core.ranges import Range, RangeIndex, merged

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:  # only named in annotations: a build never loads libfdt, a check no ACPI parser
    from pvdesc.read.acpitables import AcpiTable
    from pvdesc.read.dtb import DeviceTree, MemoryNode, Reservation

LINUX = "Linux"
EDK2 = "EDK2"


@dataclass(frozen=True)
class Area:
    """A range a consumer believes something about, and where the DT (or layout) said so.

    Attributes:
        range: the guest-physical range.
        source: e.g. ``/memory@40000000 reg[0]`` or ``/pcie@10000000 ranges[1]``.
        numa_node: a memory node's ``numa-node-id``, else ``None``.
    """

    range: Range
    source: str
    numa_node: int | None = None


@dataclass(frozen=True)
class Belief:
    """What one boot consumer believes about the guest's address space.

    Attributes:
        boot: the boot mode.
        consumer: who decides (:data:`LINUX` or :data:`EDK2`).
        ram: every range the consumer adds as memory, before reservations.
        no_map: reservations taken out of the linear map (honoured no-map children).
        mapped: reservations that stay mapped (no ``no-map``, or ``reusable``).
        refused: no-map children Linux refuses (``-EBUSY``): the range stays RAM.
        ignored: the DT's no-map children this consumer does not honour (EDK2).
        memreserve: ``/memreserve/`` entries (reserved, still mapped).
        devices: device ``reg`` entries and bus ``ranges`` windows.
        reserved_ignored: why Linux ignores the whole ``/reserved-memory`` node.
        acpi: ACPI tables given with the description (SRAT, SSDT).
    """

    boot: Boot
    consumer: str
    ram: tuple[Area, ...]
    no_map: tuple[Area, ...] = ()
    mapped: tuple[Area, ...] = ()
    refused: tuple[Area, ...] = ()
    ignored: tuple[Area, ...] = ()
    memreserve: tuple[Area, ...] = ()
    devices: tuple[Area, ...] = ()
    reserved_ignored: str | None = None
    acpi: tuple[AcpiTable, ...] = ()

    @property
    def usable_ram(self) -> tuple[Range, ...]:
        """RAM the guest may map and allocate: ``ram`` minus the no-map ranges, merged."""
        return tuple(difference(self.ram_ranges, (a.range for a in self.no_map)))

    @property
    def ram_ranges(self) -> tuple[Range, ...]:
        """``ram`` merged into disjoint ranges."""
        return tuple(merged(a.range for a in self.ram if a.range.size > 0))


def difference(ranges: Iterable[Range], holes: Iterable[Range]) -> list[Range]:
    """``ranges`` minus ``holes``, both merged first: one sweep, O((n + m) log(n + m))."""
    out: list[Range] = []
    hs = merged(h for h in holes if h.size > 0)
    k = 0
    for r in merged(x for x in ranges if x.size > 0):
        lo = r.base
        while k < len(hs) and hs[k].end <= lo:
            k += 1
        j = k
        while j < len(hs) and hs[j].base < r.end:
            if hs[j].base > lo:
                out.append(Range(lo, hs[j].base - lo))
            lo = max(lo, hs[j].end)
            j += 1
        if lo < r.end:
            out.append(Range(lo, r.end - lo))
    return out


# --------------------------------------------------------------------------- Linux


#: The smallest arm64 page: ``early_init_dt_add_memory_arch`` trims a memory entry to whole
#: pages, and 4 KiB pages trim least, so the cautious model trims to 4 KiB.
PAGE_MIN = 0x1000


def add_memory_arch(r: Range) -> Range | None:
    """What ``early_init_dt_add_memory_arch`` (drivers/of/fdt.c) adds for one memory entry.

    The base is rounded up and the size down to whole pages (an entry smaller than
    what is left of its first page is ignored), with the smallest page size: the
    trim that leaves the most RAM.
    """
    if r.size < PAGE_MIN - (r.base & (PAGE_MIN - 1)):
        return None
    base = (r.base + PAGE_MIN - 1) & ~(PAGE_MIN - 1)
    size = (r.size - (base - r.base)) & ~(PAGE_MIN - 1)
    return Range(base, size) if size > 0 else None


def linux_ram(tree: DeviceTree) -> list[Area]:
    """Linux's memory: ``early_init_dt_scan_memory`` then the usable-memory-range cap."""
    out: list[Area] = []
    for node in tree.memory_nodes:
        if node.depth != 1 or not node.available or node.pei_only:
            continue
        entries = node.usable if node.usable is not None else node.reg
        for e in entries:
            r = add_memory_arch(e.range)
            if r is not None:
                out.append(Area(r, e.source, e.numa_node))
    cap = tree.usable_memory_range
    if cap:
        if cap[0].size > 0:
            # memblock_cap_memory_range: memory outside [base, base + size) is removed.
            out = [
                Area(Range(lo, hi - lo), a.source, a.numa_node)
                for a in out
                for lo, hi in [(max(a.range.base, cap[0].base), min(a.range.end, cap[0].end))]
                if lo < hi
            ]
        out.extend(_usable_range_added(tree))
    return out


def _usable_range_added(tree: DeviceTree) -> list[Area]:
    """The second ``linux,usable-memory-range`` range, which Linux adds (``memblock_add``).

    Linux reads it with a DT (``early_init_dt_scan_nodes``) and under UEFI too:
    ``efi_init`` (drivers/firmware/efi/efi-init.c) calls
    ``early_init_dt_check_for_usable_mem_range`` after adding the UEFI map's RAM.
    """
    cap = tree.usable_memory_range or ()
    where = f"{tree.chosen} linux,usable-memory-range"
    return [Area(r, f"{where}[{i}]") for i, r in enumerate(cap[1:], 1) if r.size > 0]


#: The largest arm64 linear region: ``linear_region_size`` is ``2**(vabits_actual - 1)``,
#: 2**51 with 52-bit VAs (arch/arm64/mm/init.c).  The largest is the cautious bound.
LINEAR_REGION_MAX = 1 << 51
#: arm64 page sizes, largest first: with 64 KiB pages the initrd's rounding is widest.
_PAGE_SIZES = (0x10000, 0x4000, 0x1000)


def initrd_memory(tree: DeviceTree, ram: Sequence[Area]) -> Area | None:
    """The initrd range arm64 Linux adds back as memory, or ``None``.

    ``arm64_memblock_init`` (arch/arm64/mm/init.c) rounds ``[phys_initrd_start,
    +size)`` out to pages and, when it starts at or above the start of DRAM and ends
    within the linear region, does ``memblock_add``, ``memblock_clear_nomap`` and
    ``memblock_reserve`` on it: even outside every memory node it becomes memory,
    and ``free_initrd_mem`` hands it to the page allocator once the initramfs is
    unpacked.  It is reserved before ``early_init_fdt_scan_reserved_mem``, so a
    no-map child overlapping it is refused (``-EBUSY``).  The widest rounding whose
    range passes the checks is taken (the page size is the kernel's choice).
    """
    rd = tree.initrd
    if rd is None or rd.size == 0 or not ram:
        return None
    start = min(a.range.base for a in ram)
    for page in _PAGE_SIZES:
        base = rd.base & ~(page - 1)
        end = (rd.end + page - 1) & ~(page - 1)
        if base >= start and end <= start + LINEAR_REGION_MAX:
            return Area(Range(base, end - base), f"{tree.chosen} linux,initrd-start")
    return None


def _earliest_overlap(
    queries: Sequence[tuple[int, Range]], items: Sequence[tuple[int, Range]]
) -> dict[int, int]:
    """For each query ``(order, range)``: the smallest order of an item overlapping it.

    Items starting at or before the query's base are swept with a heap keyed by
    order (an item that ends before one query's base ends before every later
    one's); items starting inside the query are a range-minimum over the items
    sorted by base (a sparse table).  O((n + m) log(n + m)), however the ranges
    stack.  No overlap gives ``len(items) + max order + 1``-style infinity.
    """
    none = max([o for o, _ in (*queries, *items)], default=0) + 1
    its = sorted(((o, r) for o, r in items if r.size > 0), key=lambda t: t[1].base)
    bases = [r.base for _, r in its]
    table = [[o for o, _ in its]]
    width = 1
    while 2 * width <= len(its):
        prev = table[-1]
        table.append([min(prev[i], prev[i + width]) for i in range(len(its) - 2 * width + 1)])
        width *= 2

    def lowest(lo: int, hi: int) -> int:
        if lo >= hi:
            return none
        k = (hi - lo).bit_length() - 1
        return min(table[k][lo], table[k][hi - (1 << k)])

    out: dict[int, int] = {}
    heap: list[tuple[int, int]] = []  # (order, end)
    p = 0
    for order, q in sorted(queries, key=lambda t: t[1].base):
        while p < len(its) and its[p][1].base <= q.base:
            heapq.heappush(heap, (its[p][0], its[p][1].end))
            p += 1
        while heap and heap[0][1] <= q.base:
            heapq.heappop(heap)
        best = heap[0][0] if heap else none
        inside = lowest(bisect.bisect_right(bases, q.base), bisect.bisect_left(bases, q.end))
        out[order] = min(best, inside)
    return out


def _linux_reservations(
    tree: DeviceTree, ram: Sequence[Area], initrd: Area | None = None
) -> tuple[list[Area], list[Area], list[Area]]:
    """(no-map, mapped, refused) as ``fdt_scan_reserved_mem`` leaves them, in DT order.

    ``early_init_dt_reserve_memory`` refuses (``-EBUSY``) a no-map range that
    overlaps memory and something already reserved: a ``/memreserve/`` entry, the
    initrd, or an earlier child without no-map (``memblock_reserve``); otherwise it
    is marked nomap (a no-map child never reserves, so it refuses nothing).
    Answered with indexes, never pairwise.
    """
    if tree.reserved_ignored is not None:
        return [], [], []
    memory = RangeIndex([a.range for a in ram])
    before = [m.range for m in tree.memreserve] + ([initrd.range] if initrd else [])
    memreserve = RangeIndex(before)
    children = [(i, r) for i, r in enumerate(tree.reserved) if r.range.size > 0]
    earlier = _earliest_overlap(
        [(i, r.range) for i, r in children if r.no_map],
        [(i, r.range) for i, r in children if not r.no_map],
    )
    no_map: list[Area] = []
    mapped: list[Area] = []
    refused: list[Area] = []
    for i, r in children:
        area = Area(r.range, r.source)
        if not r.withheld:
            mapped.append(area)
        elif memory.overlapping(r.range) is not None and (
            memreserve.overlapping(r.range) is not None or earlier[i] < i
        ):
            refused.append(area)
        else:
            no_map.append(area)
    return no_map, mapped, refused


# --------------------------------------------------------------------------- EDK2


def edk2_ram(tree: DeviceTree) -> list[Area]:
    """EDK2's memory: every enabled memory node's raw ``reg``, plus PEI's lowest node."""
    out: list[Area] = []
    for node in tree.memory_nodes:
        if node.available and node.raw_reg is not None and not node.pei_only:
            out.extend(
                Area(r, f"{node.path} reg[{i}]", node.numa_node)
                for i, r in enumerate(node.raw_reg)
                if r.size > 0
            )
    lowest = _pei_lowest(tree.memory_nodes)
    if lowest is not None and lowest[1].size > 0:
        node, r = lowest
        if node.pei_only:
            why = "device_type matched by PEI's AsciiStrnCmp"
            out.append(Area(r, f"{node.path} reg[0] ({why})", node.numa_node))
        elif not node.available:
            out.append(Area(r, f"{node.path} reg[0] (status ignored by PEI)", node.numa_node))
    return out


def _pei_lowest(nodes: Sequence[MemoryNode]) -> tuple[MemoryNode, Range] | None:
    """QemuVirtMemInfoPeiLibConstructor's pick: ``NewBase > CurBase || NewBase == 0``.

    Only a ``reg`` of exactly two u64 (16 bytes) is read; ``status`` is not looked at,
    and ``device_type`` is compared with ``AsciiStrnCmp`` over the property's length
    (:func:`pvdesc.read.dtb.pei_type_matches`, the nodes marked ``pei_only``).  EDK2 then
    uses ``NewSize`` from its fixed ``PcdSystemMemoryBase``; pvdesc takes the node's
    own range, which is the same whenever the tree is one EDK2 can boot.
    """
    best: tuple[MemoryNode, Range] | None = None
    new_base = 0
    for node in nodes:
        if node.raw_reg is None or len(node.raw_reg) != 1:
            continue
        cur = node.raw_reg[0]
        if new_base > cur.base or new_base == 0:
            best, new_base = (node, cur), cur.base
    return best


# --------------------------------------------------------------------------- the model


def _devices(tree: DeviceTree) -> tuple[Area, ...]:
    return tuple(Area(e.range, e.source) for e in (*tree.devices, *tree.windows))


def believe(tree: DeviceTree, boot: Boot, acpi: Sequence[AcpiTable] = ()) -> Belief:
    """What the consumer of ``boot`` believes about this devicetree (see the module doc)."""
    memreserve = tuple(Area(m.range, m.source) for m in tree.memreserve)
    if boot.uefi:
        ignored = () if tree.reserved_ignored is not None else _withheld(tree.reserved)
        uefi_ram = edk2_ram(tree)
        if boot is Boot.UEFI_DT:
            # The OS reads the DT's /chosen after taking RAM from the UEFI map.
            rd = initrd_memory(tree, uefi_ram)
            uefi_ram += _usable_range_added(tree) + ([rd] if rd else [])
        return Belief(
            boot=boot,
            consumer=EDK2,
            ram=tuple(uefi_ram),
            ignored=ignored,
            memreserve=memreserve,
            devices=_devices(tree),
            reserved_ignored=tree.reserved_ignored,
            acpi=tuple(acpi),
        )
    ram = linux_ram(tree)
    rd = initrd_memory(tree, ram)
    no_map, mapped, refused = _linux_reservations(tree, ram + ([rd] if rd else []), rd)
    ram += [rd] if rd else []
    return Belief(
        boot=boot,
        consumer=LINUX,
        ram=tuple(ram),
        no_map=tuple(no_map),
        mapped=tuple(mapped),
        refused=tuple(refused),
        memreserve=memreserve,
        devices=_devices(tree),
        reserved_ignored=tree.reserved_ignored,
        acpi=tuple(acpi),
    )


def _withheld(reserved: Iterable[Reservation]) -> tuple[Area, ...]:
    return tuple(Area(r.range, r.source) for r in reserved if r.withheld and r.range.size > 0)


def of_parts(
    boot: Boot,
    memory: Iterable[tuple[Range, str, int | None]],
    reserved: Iterable[tuple[Range, str]],
    devices: Iterable[tuple[Range, str]],
) -> Belief:
    """A belief from what pvdesc itself states: root ``/memory`` ranges, no-map children, devices.

    This is the tree :mod:`pvdesc.emit.devicetree` emits for a layout (root memory nodes, a
    ``/reserved-memory`` with the root's cells and ``ranges``, no-map children), so
    both consumers read it the same way; only the no-map children differ by boot.
    """
    ram = tuple(Area(r, s, n) for r, s, n in memory if r.size > 0)
    holes = tuple(Area(r, s) for r, s in reserved if r.size > 0)
    return Belief(
        boot=boot,
        consumer=EDK2 if boot.uefi else LINUX,
        ram=ram,
        no_map=() if boot.uefi else holes,
        ignored=holes if boot.uefi else (),
        devices=tuple(Area(r, s) for r, s in devices),
    )


__all__ = [
    "EDK2",
    "LINUX",
    "Area",
    "Belief",
    "add_memory_arch",
    "believe",
    "difference",
    "edk2_ram",
    "initrd_memory",
    "linux_ram",
    "of_parts",
]
