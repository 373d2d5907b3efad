"""Cut a :class:`~pvdesc.commands.map.model.MapSource` into the map's rows and region detail.

:func:`segments` cuts ``[0, limit)`` at every boundary of every input (so memslot
edges and ``/memory`` cuts are visible), fills the holes with gaps and joins
neighbours that read the same; :func:`region_detail` lists the region's per-vCPU
structures; :func:`build` puts both together as an
:class:`~pvdesc.commands.map.model.AddressMap`.  Pure functions, O(n log n) in the
number of inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from pvdesc import kvm
from pvdesc.commands.map.model import (
    AddressMap,
    Describer,
    MapSource,
    Segment,
    SegmentKind,
    Structure,
)
from pvdesc.core.ranges import ContainingSweep, Labelled, Range, RangeIndex
from pvdesc.errors import PvdescError

#: The detail strip shows this many structures at each end before eliding.
DETAIL_EDGE = 3
#: Most rows a map may have (a description within the schema's limits needs under 15,000);
#: a DTB with more boundaries is refused instead of rendering a map nobody can read.
MAX_PIECES = 20_000
#: The label of the region's rows.
REGION_LABEL = "stolen-time region"


def _smallest(ranges: Sequence[Range]) -> ContainingSweep:
    """The smallest (then lowest, then first) containing range: the one a row is named after."""
    return ContainingSweep(ranges, lambda i: (ranges[i].size, ranges[i].base, i))


def _first(ranges: Sequence[Range]) -> ContainingSweep:
    """The containing range listed first."""
    return ContainingSweep(ranges, lambda i: (i,))


def _described(
    in_node: bool, in_reserved: bool, in_claim: bool, kind: SegmentKind, in_ram: bool
) -> tuple[Describer, ...]:
    out: list[Describer] = []
    if in_node:
        out.append(Describer.MEMORY_NODE)
    if in_reserved:
        out.append(Describer.RESERVED_NO_MAP)
    if in_ram and not in_node and kind is not SegmentKind.DEVICE:
        out.append(Describer.EXCLUDED)
    if in_claim:
        out.append(Describer.ACPI_CLAIM)
    return tuple(out)


def _cuts(src: MapSource) -> list[int]:
    """Every boundary of every input inside ``[0, limit]``, sorted; too many are refused."""
    inputs = [
        *(s.range for s in src.ram),
        *(s.range for s in src.devices),
        *src.memory_nodes,
        *src.reserved,
        *src.acpi_claims,
        *(s.range for s in src.memslots),
        src.region,
    ]
    cuts = {0, src.limit}
    for r in inputs:
        cuts.update((min(r.base, src.limit), min(r.end, src.limit)))
    points = sorted(cuts)
    if len(points) - 1 > MAX_PIECES:
        raise PvdescError(
            f"the map would have {len(points) - 1} rows, more than the {MAX_PIECES} pvdesc draws; "
            "use pvdesc check for a tree this large"
        )
    return points


def segments(src: MapSource) -> tuple[Segment, ...]:
    """Cut ``[0, limit)`` at every input boundary; merge neighbours that read the same.

    One left-to-right pass: a :class:`ContainingSweep` sweep where a row needs a chosen range,
    a :class:`~pvdesc.core.ranges.RangeIndex` where it only asks whether one is there.
    O(n log n) for n inputs, so a foreign DTB with many thousands of nodes still maps
    quickly.  A row always starts where a memslot does.
    """
    points = _cuts(src)
    flagged = RangeIndex([f.range for f in src.findings if f.range is not None])
    nodes = RangeIndex(src.memory_nodes)
    reserved = RangeIndex(src.reserved)
    claims = RangeIndex(src.acpi_claims)
    ram_sweep = _smallest([s.range for s in src.ram])
    dev_sweep = _smallest([s.range for s in src.devices])
    slot_sweep = _first([s.range for s in src.memslots])
    starts = frozenset(s.range.base for s in src.memslots)
    out: list[Segment] = []
    for lo, hi in itertools.pairwise(points):
        piece = Range(lo, hi - lo)
        ri, di, si = ram_sweep.at(lo), dev_sweep.at(lo), slot_sweep.at(lo)
        ram = src.ram[ri] if ri is not None else None
        dev = src.devices[di] if di is not None else None
        if src.region.contains(piece):
            kind, label = SegmentKind.REGION, REGION_LABEL
        elif dev is not None:
            kind, label = SegmentKind.DEVICE, dev.label
        elif ram is not None:
            kind, label = SegmentKind.RAM, ram.label
        else:
            kind, label = SegmentKind.GAP, ""
        numa = ram.numa_node if ram is not None and kind is not SegmentKind.DEVICE else None
        seg = Segment(
            span=Labelled(piece, label, numa),
            kind=kind,
            described=_described(
                nodes.overlapping(piece) is not None,
                reserved.overlapping(piece) is not None,
                claims.overlapping(piece) is not None,
                kind,
                ram is not None,
            ),
            memslot=src.memslots[si].slot if si is not None else None,
            flagged=flagged.overlapping(piece) is not None,
        )
        prev = out[-1] if out else None
        if prev is not None and lo not in starts and _reads_the_same(prev, seg):
            joined = Range(prev.range.base, hi - prev.range.base)
            out[-1] = prev._replace(span=prev.span._replace(range=joined))
        else:
            out.append(seg)
    return tuple(out)


def _reads_the_same(a: Segment, b: Segment) -> bool:
    """True when two neighbouring rows differ only in their addresses."""
    return (a.kind, a.label, a.numa_node, a.described, a.memslot, a.flagged) == (
        b.kind,
        b.label,
        b.numa_node,
        b.described,
        b.memslot,
        b.flagged,
    )


def region_detail(region: Range, structures: int, edge: int = DETAIL_EDGE) -> tuple[Structure, ...]:
    """The first and last ``edge`` structures, an ellipsis between, then the unused tail."""
    size = kvm.PVTIME_STRUCT_SIZE
    count = min(structures, region.size // size)

    def one(i: int) -> Structure:
        return Structure(i, Range(kvm.pvtime_ipa(region.base, i), size))

    if count <= 2 * edge + 1:
        rows = [one(i) for i in range(count)]
    else:
        first = kvm.pvtime_ipa(region.base, edge)
        skipped = count - 2 * edge
        rows = [
            *(one(i) for i in range(edge)),
            Structure(None, Range(first, skipped * size), "...", skipped),
            *(one(i) for i in range(count - edge, count)),
        ]
    used = count * size
    if used < region.size:
        rows.append(Structure(None, Range(region.base + used, region.size - used), "unused"))
    return tuple(rows)


def build(src: MapSource) -> AddressMap:
    """The map of a source: segments, region detail and findings."""
    return AddressMap(
        source=src,
        segments=segments(src),
        detail=region_detail(src.region, src.structures),
        findings=src.findings,
    )
