"""The guest physical address map as data: pure functions, no I/O.

A :class:`MapSource` states what is known about an address space, whatever it
came from (a :class:`~pvdesc.layout.allocate.Layout` via :func:`from_layout`, or a
foreign DTB): RAM, devices, what the firmware description says is RAM
(``/memory``), ``no-map`` reservations, ACPI claims, memslots and the
stolen-time region.  :func:`build` cuts the space into :class:`Segment` rows
(every boundary of every input splits a row, so memslot edges and ``/memory``
cuts are visible), fills the holes with gaps, and adds the region's per-vCPU
detail.  :func:`scale` maps sizes onto a drawing length: to scale where the
sizes allow it, log-compressed where they do not.

The renderers (:mod:`pvdesc.commands.map.draw`) only read an :class:`AddressMap`.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pvdesc import kvm
from pvdesc.audit.findings import Finding as CheckFinding
from pvdesc.audit.findings import Severity
from pvdesc.core.model import Boot, Describe
from pvdesc.core.ranges import Range, RangeIndex
from pvdesc.emit.hypervisor import Target
from pvdesc.errors import LayoutError, PvdescError
from pvdesc.layout import beliefs
from pvdesc.layout.allocate import Layout, verify
from pvdesc.read.dtb import DeviceTree


class Kind(enum.StrEnum):
    """What occupies a segment (the region wins over a device, a device over RAM)."""

    RAM = "ram"
    DEVICE = "device"
    REGION = "region"
    GAP = "gap"


class Describer(enum.StrEnum):
    """What in the firmware description speaks about a range."""

    MEMORY_NODE = "memory node"
    RESERVED_NO_MAP = "reserved no-map"
    EXCLUDED = "excluded"
    ACPI_CLAIM = "ACPI claim"


class Scaling(enum.StrEnum):
    """How a drawn extent relates to the size it stands for."""

    TO_SCALE = "to-scale"
    COMPRESSED = "compressed"
    ENLARGED = "enlarged"


@dataclass(frozen=True)
class Span:
    """A labelled input range.

    Attributes:
        label: what the user calls it (``memory[0]``, ``uart0``, a DT node path).
        range: the range.
        numa_node: its NUMA node (RAM only), or ``None``.
    """

    label: str
    range: Range
    numa_node: int | None = None


@dataclass(frozen=True)
class Slot:
    """A KVM memslot.

    Attributes:
        slot: the slot number.
        range: what it maps.
    """

    slot: int
    range: Range


@dataclass(frozen=True)
class Finding:
    """A problem found in the layout.

    Attributes:
        message: what is wrong.
        range: the addresses it concerns, or ``None``.
    """

    message: str
    range: Range | None = None


@dataclass(frozen=True)
class MapSource:
    """Everything known about one address space, independent of where it came from.

    Attributes:
        title: a name for the map (the VM name, or the DTB file name).
        facts: ``(name, value)`` pairs shown under the title.
        ram: RAM banks (what backs guest memory).
        devices: MMIO windows.
        memory_nodes: what the firmware description says is RAM.
        reserved: ``/reserved-memory`` ``no-map`` ranges.
        acpi_claims: ranges an ACPI device claims (``describe acpi``).
        memslots: KVM memslots (empty when unknown).
        region: the stolen-time region.
        structures: how many 64-byte structures the region holds (possible vCPUs).
        limit: the end of the address space shown (e.g. ``2**ipa_bits``).
        findings: problems already known about the source.
    """

    title: str
    facts: tuple[tuple[str, str], ...]
    ram: tuple[Span, ...]
    devices: tuple[Span, ...]
    memory_nodes: tuple[Range, ...]
    reserved: tuple[Range, ...]
    acpi_claims: tuple[Range, ...]
    memslots: tuple[Slot, ...]
    region: Range
    structures: int
    limit: int
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class Segment:
    """One row of the map: a range with one occupant and one description.

    Attributes:
        range: the addresses.
        kind: RAM, device, the region, or a gap.
        label: the occupant's label (empty for a gap).
        numa_node: the RAM's NUMA node, or ``None``.
        described: what describes it, in :class:`Describer` order (empty: nothing).
        memslot: the memslot that maps it, or ``None``.
        flagged: True when a finding concerns these addresses.
    """

    range: Range
    kind: Kind
    label: str
    numa_node: int | None
    described: tuple[Describer, ...]
    memslot: int | None
    flagged: bool = False


@dataclass(frozen=True)
class Structure:
    """One row of the region detail strip.

    Attributes:
        vcpu: the vCPU id, or ``None`` for an ellipsis row or the unused tail.
        range: the structure's 64 bytes (or what the ellipsis/tail stands for).
        note: ``""``, ``"..."`` (ellipsis: ``skipped`` structures) or ``"unused"``.
        skipped: how many structures an ellipsis row stands for.
    """

    vcpu: int | None
    range: Range
    note: str = ""
    skipped: int = 0


@dataclass(frozen=True)
class AddressMap:
    """A whole map, ready to render.

    Attributes:
        source: what it was built from.
        segments: every row, in address order, covering ``[0, source.limit)``.
        detail: the region's structures (first and last few, ellipsis between).
        findings: every problem found.
    """

    source: MapSource
    segments: tuple[Segment, ...]
    detail: tuple[Structure, ...]
    findings: tuple[Finding, ...]

    @property
    def address_digits(self) -> int:
        """Hex digits needed for the highest address shown (at least 8)."""
        return max(8, len(f"{max(self.source.limit - 1, 0):x}"))


#: The detail strip shows this many structures at each end before eliding.
DETAIL_EDGE = 3
#: Most rows a map may have (a description within the schema's limits needs under 15,000);
#: a DTB with more boundaries is refused instead of rendering a map nobody can read.
MAX_PIECES = 20_000


class _Sweep:
    """The ranges containing the current piece, as the pieces are visited left to right.

    Every input boundary is a cut, so a range either contains a piece or misses
    it.  Ranges enter a heap (ordered by ``key``) when the sweep reaches their
    base and are dropped lazily once it passes their end: O(log n) per step.

    Attributes:
        ranges: the ranges.
        key: the order among ranges containing the same piece (best first).
        order: indexes by base.
        pending: the next index into ``order`` not yet in the heap.
        heap: ``(key, index)`` of ranges entered so far.
    """

    def __init__(self, ranges: Sequence[Range], key: Callable[[int], tuple[int, ...]]) -> None:
        self.ranges = ranges
        self.key = key
        self.order = sorted(range(len(ranges)), key=lambda i: ranges[i].base)
        self.pending = 0
        self.heap: list[tuple[tuple[int, ...], int]] = []

    def best(self, lo: int) -> int | None:
        """The best range containing the piece that starts at ``lo`` (pieces in order)."""
        while self.pending < len(self.order):
            i = self.order[self.pending]
            if self.ranges[i].base > lo:
                break
            heapq.heappush(self.heap, (self.key(i), i))
            self.pending += 1
        while self.heap and self.ranges[self.heap[0][1]].end <= lo:
            heapq.heappop(self.heap)
        return self.heap[0][1] if self.heap else None


def _smallest(ranges: Sequence[Range]) -> _Sweep:
    """Sweep choosing the smallest (then lowest) containing range, as the map labels it."""
    return _Sweep(ranges, lambda i: (ranges[i].size, ranges[i].base, i))


def _first(ranges: Sequence[Range]) -> _Sweep:
    """Sweep choosing the containing range listed first."""
    return _Sweep(ranges, lambda i: (i,))


def _described(
    in_node: bool, in_reserved: bool, in_claim: bool, kind: Kind, in_ram: bool
) -> tuple[Describer, ...]:
    out: list[Describer] = []
    if in_node:
        out.append(Describer.MEMORY_NODE)
    if in_reserved:
        out.append(Describer.RESERVED_NO_MAP)
    if in_ram and not in_node and kind is not Kind.DEVICE:
        out.append(Describer.EXCLUDED)
    if in_claim:
        out.append(Describer.ACPI_CLAIM)
    return tuple(out)


def segments(src: MapSource) -> tuple[Segment, ...]:
    """Cut ``[0, limit)`` at every input boundary; merge neighbours that read the same.

    One left-to-right sweep with a :class:`_Sweep` per kind of input: O(n log n)
    for n inputs, so a foreign DTB with many thousands of nodes still maps quickly.
    """
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
    flagged = RangeIndex([f.range for f in src.findings if f.range is not None])
    ram_sweep = _smallest([s.range for s in src.ram])
    dev_sweep = _smallest([s.range for s in src.devices])
    node_sweep = _first(src.memory_nodes)
    reserved_sweep = _first(src.reserved)
    claim_sweep = _first(src.acpi_claims)
    slot_sweep = _first([s.range for s in src.memslots])
    starts = _starts(src)
    out: list[Segment] = []
    for lo, hi in itertools.pairwise(points):
        piece = Range(lo, hi - lo)
        ri, di = ram_sweep.best(lo), dev_sweep.best(lo)
        ram = src.ram[ri] if ri is not None else None
        dev = src.devices[di] if di is not None else None
        si = slot_sweep.best(lo)
        if src.region.contains(piece):
            kind, label = Kind.REGION, "stolen-time region"
        elif dev is not None:
            kind, label = Kind.DEVICE, dev.label
        elif ram is not None:
            kind, label = Kind.RAM, ram.label
        else:
            kind, label = Kind.GAP, ""
        described = _described(
            node_sweep.best(lo) is not None,
            reserved_sweep.best(lo) is not None,
            claim_sweep.best(lo) is not None,
            kind,
            ram is not None,
        )
        seg = Segment(
            range=piece,
            kind=kind,
            label=label,
            numa_node=ram.numa_node if ram is not None and kind is not Kind.DEVICE else None,
            described=described,
            memslot=src.memslots[si].slot if si is not None else None,
            flagged=flagged.overlapping(piece) is not None,
        )
        prev = out[-1] if out else None
        if (
            prev is not None
            and (prev.kind, prev.label, prev.numa_node, prev.described, prev.memslot, prev.flagged)
            == (seg.kind, seg.label, seg.numa_node, seg.described, seg.memslot, seg.flagged)
            and lo not in starts
        ):
            out[-1] = Segment(
                Range(prev.range.base, hi - prev.range.base),
                prev.kind,
                prev.label,
                prev.numa_node,
                prev.described,
                prev.memslot,
                prev.flagged,
            )
        else:
            out.append(seg)
    return tuple(out)


def _starts(src: MapSource) -> frozenset[int]:
    """Addresses where a memslot begins: a row always starts there."""
    return frozenset(s.range.base for s in src.memslots)


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


def from_layout(lay: Layout) -> MapSource:
    """A layout's map source; :func:`pvdesc.layout.allocate.verify`'s verdict becomes a finding."""
    desc = lay.description
    findings: list[Finding] = []
    try:
        verify(lay)
    except LayoutError as err:
        findings.append(Finding(err.message, lay.region))
    facts = (
        ("boot", str(desc.boot)),
        ("ipa", f"{desc.ipa_bits}-bit"),
        ("vcpus", f"{desc.vcpus} (max {desc.max_vcpus})"),
        ("placement", str(lay.placement)),
        ("describe", str(lay.describe)),
        ("region memslot", str(lay.region_memslot)),
    )
    return MapSource(
        title=desc.name,
        facts=facts,
        ram=tuple(Span(f"memory[{b.index}]", b.range, b.numa_node) for b in desc.memory),
        devices=tuple(Span(d.name, d.range) for d in desc.devices),
        memory_nodes=tuple(n.range for n in lay.memory_nodes),
        reserved=lay.reserved,
        acpi_claims=(lay.region,) if lay.describe is Describe.ACPI else (),
        memslots=tuple(Slot(s.slot, s.range) for s in lay.memslots),
        region=lay.region,
        structures=desc.max_vcpus,
        limit=desc.ipa_limit,
        findings=tuple(findings),
    )


@dataclass(frozen=True)
class Extent:
    """Where a size lands on a drawing axis.

    Attributes:
        offset: start, in drawing units.
        length: length, in drawing units.
        scaling: to scale, compressed (log) or enlarged (to the minimum).
    """

    offset: float
    length: float
    scaling: Scaling


#: Above the cap, each e-fold of size adds this fraction of the cap.
LOG_SLOPE = 0.35
#: A compressed gap is drawn at most this many minimum extents long (before its log growth).
GAP_CAP_MINIMA = 2.0


def _stretch(x: float, cap: float, minimum: float) -> tuple[float, Scaling]:
    """Linear up to ``cap``, logarithmic above (monotonic: a bigger size never draws shorter)."""
    if x > cap:
        return cap * (1 + LOG_SLOPE * math.log(x / cap)), Scaling.COMPRESSED
    if x < minimum:
        return minimum, Scaling.ENLARGED
    return x, Scaling.TO_SCALE


def scale(
    sizes: Sequence[int],
    target: float,
    minimum: float,
    *,
    gaps: Sequence[bool] = (),
    cap_fraction: float = 0.1,
) -> tuple[Extent, ...]:
    """Lay sizes end to end on an axis about ``target`` long.

    When every size fits to scale (none shorter than ``minimum``, no gap
    longer than its cap) the whole axis is linear.  Otherwise one
    bytes-per-unit factor ``u`` is chosen by bisection so the total is
    ``target``: sizes between ``minimum`` and ``cap_fraction * target`` units
    are drawn to scale, larger ones log-compressed above the cap (order is
    kept: a bigger size never draws shorter), smaller ones enlarged to
    ``minimum`` so a label fits.  Sizes flagged in ``gaps`` have a much lower
    cap (``GAP_CAP_MINIMA * minimum``): a hole is drawn short, with a break
    mark, and never crowds out what is mapped.  If ``minimum`` per size
    already exceeds ``target``, every size gets ``minimum``.
    """
    if not sizes:
        return ()
    cap = max(cap_fraction * target, minimum)
    gap_cap = min(cap, GAP_CAP_MINIMA * minimum)
    is_gap = [bool(gaps[i]) if i < len(gaps) else False for i in range(len(sizes))]

    linear = sum(sizes) / target
    if all(
        s / linear >= minimum and not (g and s / linear > gap_cap)
        for s, g in zip(sizes, is_gap, strict=True)
    ):
        return _linear(sizes, linear)

    def stretch(i: int, u: float) -> tuple[float, Scaling]:
        return _stretch(sizes[i] / u, gap_cap if is_gap[i] else cap, minimum)

    def total(log_u: float) -> float:
        u = math.exp(log_u)
        return sum(stretch(i, u)[0] for i in range(len(sizes)))

    lo, hi = -60.0, 60.0  # e**60 bytes per unit is far beyond any 52-bit space
    for _ in range(200):
        mid = (lo + hi) / 2
        if total(mid) > target:
            lo = mid
        else:
            hi = mid
    u = math.exp(hi)
    out: list[Extent] = []
    offset = 0.0
    for i in range(len(sizes)):
        length, how = stretch(i, u)
        out.append(Extent(offset, length, how))
        offset += length
    return tuple(out)


def _linear(sizes: Sequence[int], u: float) -> tuple[Extent, ...]:
    out: list[Extent] = []
    offset = 0.0
    for s in sizes:
        out.append(Extent(offset, s / u, Scaling.TO_SCALE))
        offset += s / u
    return tuple(out)


def from_dtb(
    tree: DeviceTree, target: Target, boot: Boot, findings: Sequence[CheckFinding]
) -> MapSource:
    """A foreign DTB's map source: the RAM, no-map holes and device windows the boot
    consumer believes (:func:`pvdesc.layout.beliefs.believe`, the model ``check`` judges).

    ``findings`` are :func:`pvdesc.audit.check.check`'s; errors and warnings are shown
    inline (informational ones are not problems).
    """
    belief = beliefs.believe(tree, boot)
    memory = tuple(Span(a.label, a.range, a.numa_node) for a in belief.ram)
    devices = tuple(Span(a.label, a.range) for a in belief.devices)
    limit = max([1 << target.ipa_bits, *(s.range.end for s in memory)])
    limit = max([limit, target.region.end, *(d.range.end for d in devices)])
    facts = (
        ("dtb", tree.file),
        ("boot", str(boot)),
        ("ipa", f"{target.ipa_bits}-bit"),
        ("vcpus", str(len(target.vcpu_ipas))),
        ("region from", target.source),
    )
    return MapSource(
        title=tree.file.rsplit("/", 1)[-1],
        facts=facts,
        ram=memory,
        devices=devices,
        memory_nodes=tuple(s.range for s in memory),
        reserved=tuple(a.range for a in belief.no_map),
        acpi_claims=(),
        memslots=tuple(Slot(m.slot, m.range) for m in target.memslots or ()),
        region=target.region,
        structures=len(target.vcpu_ipas),
        limit=limit,
        findings=tuple(
            Finding(f"{f.code}: {f.message}", f.range)
            for f in findings
            if f.severity is not Severity.INFO
        ),
    )
