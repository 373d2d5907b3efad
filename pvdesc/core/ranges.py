"""Guest-physical address ranges: the one range type, the one labelled range, the sweeps.

Everything that asks "which of these ranges overlap" asks it here: :class:`RangeIndex`
(stabbing queries with one witness each), :func:`sweep_overlaps` (every overlapping
pair), :class:`ContainingSweep` (the best range over each piece, left to right) and
:func:`difference`, each O(n log n) whatever the input.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

from pvdesc import kvm


class Range(NamedTuple):
    """A half-open guest-physical address range ``[base, base + size)``.

    Attributes:
        base: first address.
        size: length in bytes (> 0 for every range pvdesc builds).
    """

    base: int
    size: int

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.base + self.size

    @property
    def last(self) -> int:
        """The last address (inclusive), as ``/proc/iomem`` and ACPI print it."""
        return self.base + self.size - 1

    def overlaps(self, other: Range) -> bool:
        """True if the two ranges share at least one byte."""
        return self.base < other.end and other.base < self.end

    def contains(self, other: Range) -> bool:
        """True if ``other`` lies entirely inside this range."""
        return self.base <= other.base and other.end <= self.end

    def contains_addr(self, addr: int) -> bool:
        """True if ``addr`` lies inside this range."""
        return self.base <= addr < self.end

    def granules(self, granule: int = kvm.GRANULE) -> Range:
        """The smallest granule-aligned range covering this one."""
        lo = self.base - self.base % granule
        hi = -(-self.end // granule) * granule
        return Range(lo, hi - lo)

    def minus(self, hole: Range) -> tuple[Range, ...]:
        """This range with ``hole`` removed: zero, one or two pieces, in order."""
        if not self.overlaps(hole):
            return (self,)
        pieces = []
        if hole.base > self.base:
            pieces.append(Range(self.base, hole.base - self.base))
        if hole.end < self.end:
            pieces.append(Range(hole.end, self.end - hole.end))
        return tuple(pieces)

    def __str__(self) -> str:
        return f"{self.base:#x}-{self.last:#x}"


class RangeIndex:
    """Ranges sorted by base with a running maximum of their ends: O(log n) stabbing queries.

    Answers "which range overlaps (or contains) this query" with one witness per
    query, so a check over v structures and n ranges is O((n + v) log n) however
    much the ranges overlap each other (a hostile DTB can stack thousands of
    identical ``/memory`` nodes).  Empty ranges are left out.

    Attributes:
        order: indexes into the caller's sequence, by (base, end).
        bases: the bases in that order.
        reach: ``reach[k]`` = (largest end, its index) among ``order[0..k]``.
    """

    def __init__(self, ranges: Sequence[Range]) -> None:
        self.order = sorted(
            (i for i, r in enumerate(ranges) if r.size > 0),
            key=lambda i: (ranges[i].base, ranges[i].end),
        )
        self.bases = [ranges[i].base for i in self.order]
        self.reach: list[tuple[int, int]] = []
        best = (-1, -1)
        for i in self.order:
            if ranges[i].end > best[0]:
                best = (ranges[i].end, i)
            self.reach.append(best)

    def overlapping(self, q: Range) -> int | None:
        """The index of a range overlapping ``q`` (the one reaching furthest), or ``None``."""
        k = bisect.bisect_left(self.bases, q.end)
        if k == 0 or q.size <= 0:
            return None
        end, i = self.reach[k - 1]
        return i if end > q.base else None

    def containing(self, q: Range) -> int | None:
        """The index of a range containing ``q`` wholly, or ``None``."""
        k = bisect.bisect_right(self.bases, q.base)
        if k == 0:
            return None
        end, i = self.reach[k - 1]
        return i if end >= q.end else None


def merged(ranges: Iterable[Range]) -> list[Range]:
    """``ranges`` sorted, with overlapping or touching ones joined into one."""
    out: list[Range] = []
    for r in sorted(ranges):
        if out and r.base <= out[-1].end:
            last = out[-1]
            out[-1] = Range(last.base, max(last.end, r.end) - last.base)
        else:
            out.append(r)
    return out


def subtract(ranges: Iterable[Range], holes: Iterable[Range]) -> list[Range]:
    """``ranges`` with every hole removed (:meth:`Range.minus`), pieces in order."""
    pieces = list(ranges)
    for hole in holes:
        pieces = [p for piece in pieces for p in piece.minus(hole)]
    return pieces


def difference(ranges: Iterable[Range], holes: Iterable[Range]) -> list[Range]:
    """``ranges`` minus ``holes``, both merged first: one sweep, O((n + m) log(n + m)).

    The set difference, merged; :func:`subtract` keeps each input range's pieces apart
    (for callers that name them) and is meant for a handful of holes.
    """
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


class Labelled(NamedTuple):
    """A guest-physical range and the name messages give it.

    Attributes:
        range: the range.
        label: where it comes from, as a user would find it: a DT node and property
            entry (``/memory@40000000 reg[0]``), a description key (``memory[0]``), a
            device name.
        numa_node: its NUMA node id (RAM only), else ``None``.
    """

    range: Range
    label: str
    numa_node: int | None = None


class ContainingSweep:
    """The best range containing each piece, as the pieces are visited left to right.

    :class:`RangeIndex` answers "is there a range here" with one witness (the one
    reaching furthest), and :func:`sweep_overlaps` lists every overlapping pair (as many
    as pieces x depth when ranges nest).  This sweep picks one range by ``key`` (the map
    names each row after the smallest RAM bank or device, or the first memslot) in
    O(log n) per piece however deep the nesting, with a heap ordered by ``key``.  Every
    input boundary is a cut, so a range either contains a piece or
    misses it; ranges enter the heap when the sweep reaches their base and are dropped
    lazily once it passes their end.

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

    def at(self, lo: int) -> int | None:
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


def sweep_overlaps(queries: Sequence[Range], ranges: Sequence[Range]) -> Iterator[tuple[int, int]]:
    """Every ``(query index, range index)`` pair that overlaps.

    Both lists are sorted by base once and swept together with a heap of the
    ranges still open: O((n + m) log(n + m) + k) for k pairs, never pairwise.
    Empty ranges never overlap anything.
    """
    q_order = sorted(range(len(queries)), key=lambda i: queries[i].base)
    r_order = sorted(range(len(ranges)), key=lambda i: ranges[i].base)
    active: list[tuple[int, int]] = []  # (end, range index), a min-heap on end
    j = 0
    for qi in q_order:
        q = queries[qi]
        if q.size <= 0:
            continue
        while j < len(r_order) and ranges[r_order[j]].base < q.end:
            ri = r_order[j]
            if ranges[ri].size > 0:
                heapq.heappush(active, (ranges[ri].end, ri))
            j += 1
        while active and active[0][0] <= q.base:
            heapq.heappop(active)
        for _end, ri in active:
            if ranges[ri].base < q.end:
                yield qi, ri
