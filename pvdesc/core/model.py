"""The immutable model of a VM description, and the model-level rules.

Everything here is a :class:`typing.NamedTuple` record (immutable, compared field by
field) or an enum; nothing does I/O.  The YAML
loader (:mod:`pvdesc.description.load`) builds a :class:`VmDescription` and calls
:func:`check_consistent`; the allocator (:mod:`pvdesc.layout.allocate`) turns it into a layout.

Errors raised here are :class:`~pvdesc.errors.DescriptionError` whose ``where``
is a key path (``("memory", 1, "size")``), resolved to file:line:column by the
loader's source map.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from functools import cached_property
from typing import NamedTuple

from pvdesc import kvm
from pvdesc.core.ranges import Labelled, Range, RangeIndex
from pvdesc.errors import DescriptionError, KeyPath

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
NAME_MAX = 64


#: How untrusted values are quoted in messages: bounded, whatever the input.
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
    """The VMM whose conventions the outputs follow (its profile: :mod:`.description.profiles`)."""

    GENERIC_KVM = "generic-kvm"
    QEMU_VIRT = "qemu-virt"
    KVMTOOL = "kvmtool"
    CROSVM = "crosvm"
    FIRECRACKER = "firecracker"
    CLOUD_HYPERVISOR = "cloud-hypervisor"


class RamBank(NamedTuple):
    """One bank of guest RAM; each bank is one KVM memslot.

    Attributes:
        range: the guest-physical range.
        numa_node: the NUMA node, or ``None`` when the VM has no NUMA topology.
        index: position in the description's ``memory`` list (for error paths).
    """

    range: Range
    numa_node: int | None
    index: int  # type: ignore[assignment]  # shadows tuple.index, which no caller uses

    @property
    def path(self) -> KeyPath:
        return ("memory", self.index)


class Purpose(enum.StrEnum):
    """What a memslot backs (the ``purpose`` of ``pvdesc.hypervisor/1``)."""

    RAM = "ram"
    STOLEN_TIME = "stolen-time"


class Memslot(NamedTuple):
    """One ``KVM_SET_USER_MEMORY_REGION`` slot.

    Attributes:
        slot: the slot number.
        range: guest_phys_addr and memory_size.
        purpose: ram or stolen-time.
        bank: the RAM bank it backs (``None`` for a stolen-time slot, or for a slot
            read back from a hypervisor config).
    """

    slot: int
    range: Range
    purpose: Purpose
    bank: RamBank | None = None

    @property
    def guest_phys_addr(self) -> int:
        """``kvm_userspace_memory_region.guest_phys_addr`` (the config's name)."""
        return self.range.base

    @property
    def memory_size(self) -> int:
        """``kvm_userspace_memory_region.memory_size`` (the config's name)."""
        return self.range.size


class Target(NamedTuple):
    """What the hypervisor will program.

    Attributes:
        region: the stolen-time region.
        vcpu_ipas: ``(vcpu id, PVTIME_IPA)`` for every possible vCPU.
        ipa_bits: the guest's IPA size.
        memslots: the memslots, or ``None`` when unknown (``check --region``).
        source: where it came from (the config file, or ``--region``).
    """

    region: Range
    vcpu_ipas: tuple[tuple[int, int], ...]
    ipa_bits: int
    memslots: tuple[Memslot, ...] | None
    source: str


class Device(NamedTuple):
    """An MMIO window the guest sees.

    Attributes:
        name: the user's label (for messages).
        range: the guest-physical range.
        index: position in the description's ``devices`` list.
    """

    name: str
    range: Range
    index: int  # type: ignore[assignment]  # shadows tuple.index, which no caller uses

    @property
    def path(self) -> KeyPath:
        return ("devices", self.index)


class StolenTimeSpec(NamedTuple):
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


class AcpiIds(NamedTuple):
    """Identification written into every ACPI table header pvdesc emits.

    Attributes:
        oem_id: 1-6 printable ASCII characters (ACPI table header OEMID).
        oem_table_id: 1-8 printable ASCII characters (OEM Table ID).
        oem_revision: 32-bit OEM revision.
    """

    oem_id: str = "PVDESC"
    oem_table_id: str = "PVTIME"
    oem_revision: int = 1


class _VmDescriptionFields(NamedTuple):
    """The fields of :class:`VmDescription`, which documents them."""

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


class VmDescription(_VmDescriptionFields):
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
        vmm_version: which of the VMM's memory maps (:mod:`.description.profiles`), ``None`` for
            the newest pvdesc knows.
    """

    # No __slots__: the instance dict holds what cached_property computes.

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


def _labelled(desc: VmDescription) -> list[tuple[Labelled, KeyPath]]:
    """Every RAM bank and device, named as messages name it, with its key path."""
    out = [(Labelled(b.range, f"memory[{b.index}]"), b.path) for b in desc.memory]
    out += [(Labelled(d.range, f"devices[{d.index}] ({d.name})"), d.path) for d in desc.devices]
    return out


def first_overlap(ranges: Sequence[Range]) -> tuple[int, int] | None:
    """The first pair of overlapping ranges by address, as indexes ``(earlier, later)``.

    In :class:`~pvdesc.core.ranges.RangeIndex` order (by base, then end), each range is
    tested against the one reaching furthest before it (the index's running reach):
    O(n log n).  ``None`` when no two overlap.  Touching ranges (one ends where the next
    begins) do not overlap; empty ranges are left out.
    """
    index = RangeIndex(ranges)
    for k in range(1, len(index.order)):
        end, earlier = index.reach[k - 1]
        later = index.order[k]
        if ranges[later].base < end:
            return earlier, later
    return None


def check_consistent(desc: VmDescription) -> None:
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
    items = _labelled(desc)
    for item, path in items:
        label, r = item.label, item.range
        if r.end > desc.ipa_limit:
            raise DescriptionError(
                f"{label} {r} ends beyond the {desc.ipa_bits}-bit IPA space "
                f"(limit {desc.ipa_limit:#x}); raise ipa_bits or move it",
                (*path, "base"),
            )
    clash = first_overlap([item.range for item, _ in items])
    if clash is not None:
        (a, _), (b, pb) = items[clash[0]], items[clash[1]]
        raise DescriptionError(f"{b.label} {b.range} overlaps {a.label} {a.range}", (*pb, "base"))
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
