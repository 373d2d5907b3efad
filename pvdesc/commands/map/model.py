"""The address map's data: what a map is drawn from, its rows, and the region's detail.

A :class:`MapSource` states what is known about an address space, whatever it came
from (:mod:`pvdesc.commands.map.sources`: a layout, or a foreign DTB and ``check``'s
findings).  :func:`pvdesc.commands.map.rows.build` cuts it into :class:`Segment` rows
and the region's :class:`Structure` detail: an :class:`AddressMap`, which the
renderers (:mod:`pvdesc.commands.map.terminal`, :mod:`pvdesc.commands.map.draw`) only
read.  Records (:class:`typing.NamedTuple`) and enums over the shared types (:class:`Range`,
:class:`Labelled`, :class:`Memslot`, :class:`Finding`); no I/O.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from pvdesc.core.findings import Finding
from pvdesc.core.model import Memslot
from pvdesc.core.ranges import Labelled, Range


class SegmentKind(enum.StrEnum):
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


class MapSource(NamedTuple):
    """Everything known about one address space, independent of where it came from.

    Attributes:
        title: a name for the map (the VM name, or the DTB file name).
        facts: ``(name, value)`` pairs shown under the title.
        ram: RAM banks (what backs guest memory), labelled, with their NUMA nodes.
        devices: MMIO windows, labelled.
        memory_nodes: what the firmware description says is RAM.
        reserved: ``/reserved-memory`` ``no-map`` ranges.
        acpi_claims: ranges an ACPI device claims (``describe acpi``).
        memslots: KVM memslots (empty when unknown).
        region: the stolen-time region.
        structures: how many 64-byte structures the region holds (possible vCPUs).
        limit: the end of the address space shown (e.g. ``2**ipa_bits``).
        findings: problems already known about the source; each ``message`` is the
            line the map prints for it.
    """

    title: str
    facts: tuple[tuple[str, str], ...]
    ram: tuple[Labelled, ...]
    devices: tuple[Labelled, ...]
    memory_nodes: tuple[Range, ...]
    reserved: tuple[Range, ...]
    acpi_claims: tuple[Range, ...]
    memslots: tuple[Memslot, ...]
    region: Range
    structures: int
    limit: int
    findings: tuple[Finding, ...] = ()


class Segment(NamedTuple):
    """One row of the map: a range with one occupant and one description.

    Attributes:
        span: the row's addresses, labelled with its occupant's label (empty for a gap)
            and the RAM's NUMA node (``None`` for anything but RAM).
        kind: RAM, device, the region, or a gap.
        described: what describes it, in :class:`Describer` order (empty: nothing).
        memslot: the number of the memslot that maps it, or ``None``.
        flagged: True when a finding concerns these addresses.
    """

    span: Labelled
    kind: SegmentKind
    described: tuple[Describer, ...]
    memslot: int | None
    flagged: bool = False

    @property
    def range(self) -> Range:
        """The row's addresses."""
        return self.span.range

    @property
    def label(self) -> str:
        """The occupant's label (empty for a gap)."""
        return self.span.label

    @property
    def numa_node(self) -> int | None:
        """The RAM's NUMA node, or ``None``."""
        return self.span.numa_node


class Structure(NamedTuple):
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


class AddressMap(NamedTuple):
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
