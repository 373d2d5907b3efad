"""The immutable model of a VM description, and the model-level rules.

Everything here is a frozen dataclass or an enum; nothing does I/O.  The YAML
loader (:mod:`pvdesc.description.load`) builds a :class:`VmDescription` and calls
:func:`validate`; the allocator (:mod:`pvdesc.layout.allocate`) turns it into a layout.

Errors raised here are :class:`~pvdesc.errors.DescriptionError` whose ``where``
is a key path (``("memory", 1, "size")``), resolved to file:line:column by the
loader's source map.
"""

from __future__ import annotations

import bisect
import enum
import re
import reprlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from pvdesc import kvm
from pvdesc.errors import DescriptionError, KeyPath

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
NAME_MAX = 64


def human(size: int) -> str:
    """A byte count in the largest binary unit that divides it exactly (``64 KiB``)."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
#: Every number in a description (address, size, count, id) is below 2**64.
MAX_QUANTITY_BITS = 64
# Anchored with fullmatch: "$" would also accept a trailing newline.  At most 20
# significant decimal or 16 hex digits (after leading zeros): 2**64 needs 20.
_QUANTITY_RE = re.compile(r"0[xX]0*[0-9a-fA-F]{1,16}|0*[0-9]{1,20}[KMGT]?")
#: How untrusted values are quoted in messages: bounded, whatever the input.
_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2


def short(value: object) -> str:
    """``repr(value)``, cut to a few dozen characters, for quoting untrusted values in messages."""
    return _SHORT.repr(value)


def parse_quantity(value: int | str) -> int:
    """An integer, or ``"0x.."``/decimal text with an optional binary K/M/G/T suffix.

    Raises ``ValueError`` for anything else, and for values of 2**64 or more.
    """
    if isinstance(value, int):
        result = value
    elif not _QUANTITY_RE.fullmatch(value):
        raise ValueError(
            f'not a size or address: {short(value)} (an integer below 2^64, "0x...", or '
            "digits with K/M/G/T)"
        )
    elif value[:2].lower() == "0x":
        result = int(value, 16)
    elif value[-1] in _SUFFIX:
        result = int(value[:-1]) * _SUFFIX[value[-1]]
    else:
        result = int(value)
    if result >= 1 << MAX_QUANTITY_BITS:
        raise ValueError(f"{short(value)} is 2^64 or more: addresses and sizes are 64-bit")
    return result


class Boot(enum.StrEnum):
    """How the guest learns its memory map.

    - ``linux-dt``: Linux reads the DTB directly; it honours ``/reserved-memory``.
    - ``uefi-dt``: EDK2 builds the UEFI memory map from the DT ``/memory`` nodes
      only, ignoring ``/reserved-memory`` and ``/memreserve/`` (measured,
      docs/boot-evidence.md §4, docs/acpi.md §2.3), then boots Linux with the DT.
    - ``uefi-acpi``: as uefi-dt, but the guest then uses ACPI; it still only
      sees the UEFI memory map built from ``/memory`` (docs/acpi.md §1.1).
    """

    LINUX_DT = "linux-dt"
    UEFI_DT = "uefi-dt"
    UEFI_ACPI = "uefi-acpi"

    @property
    def uefi(self) -> bool:
        """True when EDK2 builds the memory map (and ignores ``/reserved-memory``)."""
        return self is not Boot.LINUX_DT


class Placement(enum.StrEnum):
    """Where the stolen-time region goes (see :mod:`pvdesc.layout.allocate`)."""

    HOLE = "hole"
    CARVE = "carve"
    FIXED = "fixed"


class Describe(enum.StrEnum):
    """How the firmware description keeps the guest off the region."""

    AUTO = "auto"
    NONE = "none"
    EXCLUDE = "exclude"
    RESERVED_MEMORY = "reserved-memory"
    ACPI = "acpi"


class Vmm(enum.StrEnum):
    """The VMM whose conventions the outputs follow (its profile: :mod:`pvdesc.layout.profiles`)."""

    GENERIC_KVM = "generic-kvm"
    QEMU_VIRT = "qemu-virt"
    KVMTOOL = "kvmtool"
    CROSVM = "crosvm"
    FIRECRACKER = "firecracker"
    CLOUD_HYPERVISOR = "cloud-hypervisor"


@dataclass(frozen=True, order=True)
class Range:
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


@dataclass(frozen=True)
class RamBank:
    """One bank of guest RAM; each bank is one KVM memslot.

    Attributes:
        range: the guest-physical range.
        numa_node: the NUMA node, or ``None`` when the VM has no NUMA topology.
        index: position in the description's ``memory`` list (for error paths).
    """

    range: Range
    numa_node: int | None
    index: int

    @property
    def path(self) -> KeyPath:
        return ("memory", self.index)


@dataclass(frozen=True)
class Device:
    """An MMIO window the guest sees.

    Attributes:
        name: the user's label (for messages).
        range: the guest-physical range.
        index: position in the description's ``devices`` list.
    """

    name: str
    range: Range
    index: int

    @property
    def path(self) -> KeyPath:
        return ("devices", self.index)


@dataclass(frozen=True)
class StolenTimeSpec:
    """The ``stolen_time`` section as written.

    Attributes:
        placement: hole, carve or fixed.
        base: the address for ``fixed`` (``None`` otherwise).
        describe: how the firmware description keeps the guest off it (may be auto).
    """

    placement: Placement = Placement.HOLE
    base: int | None = None
    describe: Describe = Describe.AUTO


ACPI_OEM_ID_RE = re.compile(r"^[ -~]{1,6}$")
ACPI_OEM_TABLE_ID_RE = re.compile(r"^[ -~]{1,8}$")


@dataclass(frozen=True)
class AcpiIds:
    """Identification written into every ACPI table header pvdesc emits.

    Attributes:
        oem_id: 1-6 printable ASCII characters (ACPI table header OEMID).
        oem_table_id: 1-8 printable ASCII characters (OEM Table ID).
        oem_revision: 32-bit OEM revision.
    """

    oem_id: str = "PVDESC"
    oem_table_id: str = "PVTIME"
    oem_revision: int = 1


@dataclass(frozen=True)
class VmDescription:
    """A whole VM description.

    Attributes:
        name: ``[a-z0-9][a-z0-9-]*``; used in output file names.
        vcpus: vCPUs at boot.
        max_vcpus: possible vCPUs; the region is sized for this many.
        ipa_bits: guest physical address size; every address must lie below 2**ipa_bits.
        boot: how the guest learns its memory map.
        vmm: whose conventions the outputs follow.
        memory: RAM banks, in the order written.
        devices: MMIO windows, in the order written.
        stolen_time: the region's placement and description.
        acpi: ACPI table header identification (used with describe acpi).
        vmm_version: which of the VMM's memory maps (:mod:`pvdesc.layout.profiles`), ``None`` for
            the newest pvdesc knows.
    """

    name: str
    vcpus: int
    max_vcpus: int
    ipa_bits: int
    boot: Boot
    vmm: Vmm
    memory: tuple[RamBank, ...]
    devices: tuple[Device, ...]
    stolen_time: StolenTimeSpec
    acpi: AcpiIds = AcpiIds()
    vmm_version: str | None = None

    @property
    def ipa_limit(self) -> int:
        """``2**ipa_bits``: the first address the guest cannot use."""
        return 1 << self.ipa_bits

    @property
    def numa(self) -> bool:
        """True when the banks carry NUMA node ids."""
        return any(b.numa_node is not None for b in self.memory)

    @cached_property
    def numa_nodes(self) -> tuple[int, ...]:
        """The distinct NUMA node ids, sorted (computed once: the SRAT asks once per vCPU)."""
        return tuple(sorted({b.numa_node for b in self.memory if b.numa_node is not None}))


def _labelled(desc: VmDescription) -> Iterator[tuple[str, Range, KeyPath]]:
    for bank in desc.memory:
        yield f"memory[{bank.index}]", bank.range, bank.path
    for dev in desc.devices:
        yield f"devices[{dev.index}] ({dev.name})", dev.range, dev.path


def first_overlap(
    items: Iterable[tuple[str, Range, KeyPath]],
) -> tuple[tuple[str, Range, KeyPath], tuple[str, Range, KeyPath]] | None:
    """The first pair of overlapping ranges, by address, or ``None``.

    A sort and one sweep: O(n log n).  Touching ranges (one ends where the next
    begins) do not overlap.
    """
    ordered = sorted(items, key=lambda t: (t[1].base, t[1].end))
    reach: tuple[str, Range, KeyPath] | None = None
    for item in ordered:
        if reach is not None and item[1].base < reach[1].end:
            return reach, item
        if reach is None or item[1].end > reach[1].end:
            reach = item
    return None


def validate(desc: VmDescription) -> None:
    """Apply the model-level rules; raise :class:`DescriptionError` on the first violation.

    Rules, in the order checked:

    - ``name`` matches ``[a-z0-9][a-z0-9-]*`` (it names output files, so no paths);
    - ``1 <= vcpus <= max_vcpus <= KVM_MAX_VCPUS`` (512, ``include/kvm/arm_vgic.h``);
    - ``ipa_bits`` in 32..52 (arm64 stage-2 IPA sizes);
    - at least one RAM bank; sizes > 0; RAM banks 64 KiB aligned in base and
      size (so no 64 KiB granule is shared between RAM and anything else,
      pvtime.rst's advice);
    - every range below ``2**ipa_bits``;
    - no two banks/devices overlap;
    - NUMA ids on all banks or on none;
    - a ``fixed`` placement has a base and only ``fixed`` has one.
    """
    if not NAME_RE.fullmatch(desc.name) or len(desc.name) > NAME_MAX:
        raise DescriptionError(
            f"name {desc.name!r} must match [a-z0-9][a-z0-9-]* (at most {NAME_MAX} "
            "characters): it names the output files, so no paths or dots",
            ("name",),
        )
    if desc.vcpus < 1:
        raise DescriptionError("vcpus must be at least 1", ("vcpus",))
    if desc.max_vcpus < desc.vcpus:
        raise DescriptionError(
            f"max_vcpus ({desc.max_vcpus}) is smaller than vcpus ({desc.vcpus})", ("max_vcpus",)
        )
    if desc.max_vcpus > kvm.KVM_MAX_VCPUS:
        raise DescriptionError(
            f"max_vcpus ({desc.max_vcpus}) exceeds what KVM on arm64 allows "
            f"(KVM_MAX_VCPUS = {kvm.KVM_MAX_VCPUS})",
            ("max_vcpus",),
        )
    if not kvm.IPA_BITS_MIN <= desc.ipa_bits <= kvm.IPA_BITS_MAX:
        raise DescriptionError(
            f"ipa_bits ({desc.ipa_bits}) must be between {kvm.IPA_BITS_MIN} and "
            f"{kvm.IPA_BITS_MAX} (arm64 stage-2 IPA sizes)",
            ("ipa_bits",),
        )
    if not desc.memory:
        raise DescriptionError("at least one RAM bank is needed", ("memory",))
    for bank in desc.memory:
        r = bank.range
        if r.size <= 0:
            raise DescriptionError("RAM bank size must be positive", (*bank.path, "size"))
        if r.base % kvm.GRANULE:
            raise DescriptionError(
                f"RAM bank base {r.base:#x} is not 64 KiB aligned (pvtime.rst: no 64 KiB "
                "granule may be shared between RAM and the stolen-time region)",
                (*bank.path, "base"),
            )
        if r.size % kvm.GRANULE:
            raise DescriptionError(
                f"RAM bank size {r.size:#x} is not a multiple of 64 KiB", (*bank.path, "size")
            )
    for dev in desc.devices:
        if dev.range.size <= 0:
            raise DescriptionError("device size must be positive", (*dev.path, "size"))
    for label, r, path in _labelled(desc):
        if r.end > desc.ipa_limit:
            raise DescriptionError(
                f"{label} {r} ends beyond the {desc.ipa_bits}-bit IPA space "
                f"(limit {desc.ipa_limit:#x}); raise ipa_bits or move it",
                (*path, "base"),
            )
    clash = first_overlap(_labelled(desc))
    if clash is not None:
        (la, ra, _), (lb, rb, pb) = clash
        raise DescriptionError(f"{lb} {rb} overlaps {la} {ra}", (*pb, "base"))
    with_node = [b for b in desc.memory if b.numa_node is not None]
    if with_node and len(with_node) != len(desc.memory):
        missing = next(b for b in desc.memory if b.numa_node is None)
        raise DescriptionError(
            "numa_node is set on some banks but not this one: give every bank a node, or none",
            missing.path,
        )
    if not ACPI_OEM_ID_RE.fullmatch(desc.acpi.oem_id):
        raise DescriptionError(
            f"oem_id {desc.acpi.oem_id!r} must be 1-6 printable ASCII characters "
            "(ACPI table header OEMID field)",
            ("acpi", "oem_id"),
        )
    if not ACPI_OEM_TABLE_ID_RE.fullmatch(desc.acpi.oem_table_id):
        raise DescriptionError(
            f"oem_table_id {desc.acpi.oem_table_id!r} must be 1-8 printable ASCII characters "
            "(ACPI table header OEM Table ID field)",
            ("acpi", "oem_table_id"),
        )
    if not 0 <= desc.acpi.oem_revision < 1 << 32:
        raise DescriptionError("oem_revision must fit in 32 bits", ("acpi", "oem_revision"))
    st = desc.stolen_time
    if st.placement is Placement.FIXED and st.base is None:
        raise DescriptionError("placement fixed needs a base", ("stolen_time", "placement"))
    if st.placement is not Placement.FIXED and st.base is not None:
        raise DescriptionError(
            f"base is only allowed with placement fixed (placement is {st.placement})",
            ("stolen_time", "base"),
        )


def ram_ranges(banks: Sequence[RamBank]) -> tuple[Range, ...]:
    """The banks' ranges in address order."""
    return tuple(sorted(b.range for b in banks))
