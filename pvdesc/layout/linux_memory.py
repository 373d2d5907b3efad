"""What arm64 Linux, booted from a devicetree, adds as memory and honours as reserved.

Each function mirrors the kernel function it names (drivers/of/fdt.c,
drivers/of/of_reserved_mem.c, arch/arm64/mm/init.c):

- memory: ``early_init_dt_scan_memory`` visits the root's children only
  (``fdt_for_each_subnode(node, fdt, 0)``), keeps those whose ``device_type``
  ``strcmp``-equals ``"memory"`` (the first string of a list), skips unavailable
  ones (``of_fdt_device_is_available``), reads ``linux,usable-memory`` *instead
  of* ``reg`` when present, with the root's cells, and skips zero sizes;
  ``early_init_dt_add_memory_arch`` trims each entry to whole pages
  (:func:`add_memory_arch`);
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
  ``compatible``, which a driver claims (``fdt_init_reserved_mem_node``: a
  failing init function clears nomap, a succeeding one uses the range);
- ``/memreserve/`` (``early_init_fdt_scan_reserved_mem``): ``memblock_reserve``,
  still mapped;
- ``/chosen`` ``linux,initrd-start``/``-end``: ``arm64_memblock_init`` adds the
  initrd's pages as memory, freed to the page allocator after boot
  (:func:`initrd_memory`).

Under ``uefi-dt`` the OS also reads the DT's ``/chosen`` (the EFI stub keeps it):
:func:`usable_range_added` and :func:`initrd_memory` apply on top of the UEFI map.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence

from pvdesc.core.ranges import Labelled, Range, RangeIndex

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:  # only named in annotations: a build never loads libfdt
    from pvdesc.read.dtb import DeviceTree


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


def linux_ram(tree: DeviceTree) -> list[Labelled]:
    """Linux's memory: ``early_init_dt_scan_memory`` then the usable-memory-range cap."""
    out: list[Labelled] = []
    for node in tree.memory_nodes:
        if node.depth != 1 or not node.available or node.pei_only:
            continue
        entries = node.usable if node.usable is not None else node.reg
        for e in entries:
            r = add_memory_arch(e.range)
            if r is not None:
                out.append(Labelled(r, e.source, e.numa_node))
    cap = tree.usable_memory_range
    if cap:
        if cap[0].size > 0:
            # memblock_cap_memory_range: memory outside [base, base + size) is removed.
            out = [
                Labelled(Range(lo, hi - lo), a.label, a.numa_node)
                for a in out
                for lo, hi in [(max(a.range.base, cap[0].base), min(a.range.end, cap[0].end))]
                if lo < hi
            ]
        out.extend(usable_range_added(tree))
    return out


def usable_range_added(tree: DeviceTree) -> list[Labelled]:
    """The second ``linux,usable-memory-range`` range, which Linux adds (``memblock_add``).

    Linux reads it with a DT (``early_init_dt_scan_nodes``) and under UEFI too:
    ``efi_init`` (drivers/firmware/efi/efi-init.c) calls
    ``early_init_dt_check_for_usable_mem_range`` after adding the UEFI map's RAM.
    """
    cap = tree.usable_memory_range or ()
    where = f"{tree.chosen} linux,usable-memory-range"
    return [Labelled(r, f"{where}[{i}]") for i, r in enumerate(cap[1:], 1) if r.size > 0]


#: The largest arm64 linear region: ``linear_region_size`` is ``2**(vabits_actual - 1)``,
#: 2**51 with 52-bit VAs (arch/arm64/mm/init.c).  The largest is the cautious bound.
LINEAR_REGION_MAX = 1 << 51
#: arm64 page sizes, largest first: with 64 KiB pages the initrd's rounding is widest.
_PAGE_SIZES = (0x10000, 0x4000, 0x1000)


def initrd_memory(tree: DeviceTree, ram: Sequence[Labelled]) -> Labelled | None:
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
            return Labelled(Range(base, end - base), f"{tree.chosen} linux,initrd-start")
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


def linux_reservations(
    tree: DeviceTree, ram: Sequence[Labelled], initrd: Labelled | None = None
) -> tuple[list[Labelled], list[Labelled], list[Labelled]]:
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
    no_map: list[Labelled] = []
    mapped: list[Labelled] = []
    refused: list[Labelled] = []
    for i, r in children:
        area = Labelled(r.range, r.source)
        if not r.withheld:
            mapped.append(area)
        elif memory.overlapping(r.range) is not None and (
            memreserve.overlapping(r.range) is not None or earlier[i] < i
        ):
            refused.append(area)
        else:
            no_map.append(area)
    return no_map, mapped, refused
