"""Allocate the stolen-time region: pure functions from a description to a :class:`Layout`.

The whole guest address map is visible in a :class:`Layout` (in the spirit of
QEMU's ``base_memmap[]``): RAM banks, the memslots KVM gets, the ``/memory``
ranges the firmware description states, ``/reserved-memory`` carve-outs, and the
region with its per-vCPU IPAs.

Each rule is a small function whose docstring cites its source.  References:
``docs/pvtime-and-dt.md``, ``docs/vmm-layouts.md``,
``docs/boot-evidence.md`` and ``docs/acpi.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pvdesc import kvm
from pvdesc.audit import check
from pvdesc.audit.findings import Severity
from pvdesc.core.model import Boot, Describe, Memslot, Placement, Purpose, RamBank, VmDescription
from pvdesc.core.ranges import Range, merged
from pvdesc.core.units import human
from pvdesc.emit.hypervisor import target
from pvdesc.errors import LayoutError
from pvdesc.layout import beliefs, profiles


@dataclass(frozen=True)
class MemoryNode:
    """A range the firmware description states is RAM (a DT ``/memory`` node).

    Attributes:
        range: the range.
        numa_node: its NUMA node id, or ``None``.
        bank: the RAM bank it comes from.
    """

    range: Range
    numa_node: int | None
    bank: RamBank


@dataclass(frozen=True)
class Layout:
    """The allocated guest address map.

    Attributes:
        description: the VM description it was built from.
        region: the stolen-time region, sized by the VMM profile's rule; its 64 KiB granules
            hold no usable RAM and no device.
        placement: how the region was chosen.
        describe: how the description keeps the guest off it (never ``auto``).
        memslots: every memslot, RAM banks first (slot i = memory[i]).
        region_memslot: the slot number that contains the region.
        memory_nodes: what the firmware says is RAM, in address order.
        reserved: ``/reserved-memory`` ``no-map`` ranges (inside ``memory_nodes``).
        host_bank: the RAM bank the region was cut from, or ``None`` (outside RAM).
    """

    description: VmDescription
    region: Range
    placement: Placement
    describe: Describe
    memslots: tuple[Memslot, ...]
    region_memslot: int
    memory_nodes: tuple[MemoryNode, ...]
    reserved: tuple[Range, ...]
    host_bank: RamBank | None

    @property
    def vcpu_ipas(self) -> tuple[int, ...]:
        """``base + 64 * id`` for every possible vCPU, 0..max_vcpus-1."""
        return tuple(kvm.pvtime_ipa(self.region.base, i) for i in range(self.description.max_vcpus))

    @property
    def usable_ram(self) -> tuple[Range, ...]:
        """What the guest may allocate, as the boot consumer believes it (:func:`belief`)."""
        return belief(self).usable_ram

    @property
    def dedicated_memslot(self) -> bool:
        """True when the region has a memslot of its own (hole/fixed outside RAM)."""
        return self.memslots[self.region_memslot].purpose is Purpose.STOLEN_TIME


def occupied_granules(desc: VmDescription) -> list[Range]:
    """Every RAM bank and device, widened to 64 KiB granules, merged and sorted.

    The region may not share a 64 KiB granule with RAM or MMIO: Mark Rutland's
    review of the pvtime series (docs/pvtime-and-dt.md §1).
    """
    return merged(r.granules() for r in _all_ranges(desc))


def _all_ranges(desc: VmDescription) -> Iterable[Range]:
    yield from (b.range for b in desc.memory)
    yield from (d.range for d in desc.devices)


#: The hole search starts above the first 64 KiB: an IPA of 0 for vCPU 0 is legal for
#: KVM but reads as a null pointer to too much guest and VMM code.
HOLE_SEARCH_START = kvm.GRANULE


def find_hole(
    occupied: Sequence[Range], size: int, limit: int, start: int = HOLE_SEARCH_START
) -> int | None:
    """The lowest 64 KiB-aligned base with ``size`` free bytes below ``limit``.

    ``occupied`` must be sorted, merged and granule-aligned (see
    :func:`occupied_granules`).  This is what QEMU, kvmtool and crosvm do by
    hand: a slot of its own, outside RAM and MMIO (docs/vmm-layouts.md §9).  One
    sweep: O(n).
    """
    cursor = start
    for r in occupied:
        if r.end <= cursor:
            continue
        if r.base >= cursor + size:
            break
        cursor = r.end
    return cursor if cursor + size <= limit else None


def carve_bank(desc: VmDescription) -> RamBank:
    """The bank carve takes from: the highest-addressed bank of NUMA node 0.

    Without NUMA every bank counts as node 0.  The region is taken from the
    top of that bank so the rest of the bank stays one contiguous range, as
    Firecracker does for its system-memory area (docs/vmm-layouts.md §5).
    """
    node0 = [b for b in desc.memory if (b.numa_node or 0) == 0]
    if not node0:
        raise LayoutError(
            "placement carve takes the region from NUMA node 0, but no bank is on node 0",
            ("memory",),
        )
    return max(node0, key=lambda b: b.range.base)


def _bank_containing(desc: VmDescription, r: Range) -> RamBank | None:
    for bank in desc.memory:
        if bank.range.overlaps(r):
            return bank
    return None


def choose_region(desc: VmDescription, size: int) -> tuple[Range, RamBank | None]:
    """Apply the placement rule; return the region and the bank it lies in (if any)."""
    st = desc.stolen_time
    if st.placement is Placement.HOLE:
        base = find_hole(occupied_granules(desc), size, desc.ipa_limit)
        if base is None:
            raise LayoutError(
                f"no free 64 KiB-aligned gap of {size:#x} bytes below 2^{desc.ipa_bits} outside "
                "every RAM bank and device granule; raise ipa_bits or use placement carve",
                ("stolen_time", "placement"),
            )
        return Range(base, size), None
    if st.placement is Placement.CARVE:
        bank = carve_bank(desc)
        if bank.range.size <= size:
            raise LayoutError(
                f"memory[{bank.index}] ({bank.range.size:#x} bytes) is too small to carve a "
                f"{size:#x}-byte region from and keep any RAM",
                (*bank.path, "size"),
            )
        return Range(bank.range.end - size, size), bank
    if st.base is None:
        raise LayoutError("placement fixed needs a base", ("stolen_time", "placement"))
    return _check_fixed(desc, Range(st.base, size))


def _check_fixed(desc: VmDescription, region: Range) -> tuple[Range, RamBank | None]:
    """Validate a user-chosen base (docs/pvtime-and-dt.md §1-2, vcpu.rst §3.1)."""
    where = ("stolen_time", "base")
    prof = profiles.for_description(desc)
    if region.base == 0:
        raise LayoutError(
            f"fixed base {region.base:#x} would give vCPU 0 the IPA 0: legal for KVM, but it "
            "reads as a null pointer to too much guest and VMM code, and the C header's "
            f"lookup returns 0 for a vCPU out of range; put the region at {HOLE_SEARCH_START:#x} "
            "or above",
            where,
        )
    if region.base % prof.region_align:
        raise LayoutError(
            f"fixed base {region.base:#x} is not {human(prof.region_align)} aligned (KVM needs "
            "64-byte alignment; pvtime.rst advises whole 64 KiB pages)",
            where,
        )
    inside = prof.system_memory
    if inside is not None and not inside.contains(region):
        raise LayoutError(
            f"region {region} is outside {desc.vmm}'s system memory {inside}, where it "
            "allocates the stolen-time structures",
            where,
        )
    if region.end > desc.ipa_limit:
        raise LayoutError(f"region {region} ends beyond the {desc.ipa_bits}-bit IPA space", where)
    for dev in desc.devices:
        if dev.range.granules().overlaps(region):
            verb = "overlaps" if dev.range.overlaps(region) else "shares a 64 KiB granule with"
            raise LayoutError(
                f"region {region} {verb} devices[{dev.index}] ({dev.name}) {dev.range}", where
            )
    bank = _bank_containing(desc, region)
    if bank is not None and not bank.range.contains(region):
        raise LayoutError(
            f"region {region} straddles the edge of memory[{bank.index}] {bank.range}: put it "
            "wholly inside one bank or wholly outside RAM",
            where,
        )
    if bank is not None and bank.range == region:
        raise LayoutError(
            f"region {region} would take all of memory[{bank.index}]; make the bank larger",
            where,
        )
    return region, bank


def resolve_describe(desc: VmDescription, host_bank: RamBank | None) -> Describe:
    """Resolve ``auto`` and refuse unsafe or meaningless pairs.

    - auto: ``acpi`` for boot uefi-acpi; otherwise ``none`` outside RAM (hole,
      or fixed outside RAM) and ``exclude`` inside.
    - none inside RAM: refused, the guest would be told the IPA is usable RAM
      and hand the page out while KVM keeps writing it (docs/pvtime-and-dt.md §3).
    - reserved-memory with uefi-dt/uefi-acpi: refused, EDK2 ignores
      ``/reserved-memory`` and the carve-out becomes System RAM (measured,
      docs/boot-evidence.md §4; docs/acpi.md §2.3).
    - reserved-memory or exclude outside RAM: refused, there is nothing to cut
      out, and a ``/reserved-memory`` node over a range absent from ``/memory``
      is silently accepted today but a pending 2026 patch would reject it
      (docs/pvtime-and-dt.md §4, "Caveat for a no-map node outside /memory").
    - acpi: the region is kept out of every ``/memory`` node (cut out when
      inside a bank, like exclude) and an SSDT claims it; only meaningful for
      boot uefi-acpi, because no ACPI table can take RAM away from an arm64
      guest, only the UEFI map can (docs/acpi.md §0).
    """
    where = ("stolen_time", "describe")
    st = desc.stolen_time
    inside = host_bank is not None
    mode = st.describe
    if mode is Describe.AUTO:
        if desc.boot is Boot.UEFI_ACPI:
            return Describe.ACPI
        return Describe.EXCLUDE if inside else Describe.NONE
    if mode is Describe.ACPI and desc.boot is not Boot.UEFI_ACPI:
        raise LayoutError(
            f"describe acpi needs boot uefi-acpi (boot is {desc.boot}): a guest booted from a DT "
            "never reads the SSDT; use none (outside RAM) or exclude (inside RAM)",
            where,
        )
    if mode is Describe.NONE and inside:
        raise LayoutError(
            f"describe none with the region inside RAM ({st.placement}) would tell the guest the "
            "stolen-time IPA is usable RAM: the guest allocates the page and KVM silently "
            "corrupts it; use describe exclude (or reserved-memory for linux-dt)",
            where,
        )
    if mode in (Describe.EXCLUDE, Describe.RESERVED_MEMORY) and not inside:
        raise LayoutError(
            f"describe {mode} needs the region inside a RAM bank, but placement {st.placement} "
            "put it outside every bank, where no /memory node covers it already; use describe "
            "none (a /reserved-memory node outside /memory is fragile: pending kernel patches "
            "reject it)",
            where,
        )
    if mode is Describe.RESERVED_MEMORY and desc.boot.uefi:
        raise LayoutError(
            f"describe reserved-memory with boot {desc.boot} is unsafe: EDK2 builds the UEFI "
            "memory map from /memory nodes only and ignores /reserved-memory, so the guest gets "
            "the region as System RAM (measured, docs/boot-evidence.md §4); use describe exclude",
            where,
        )
    return mode


def memslots(
    desc: VmDescription, region: Range, host_bank: RamBank | None
) -> tuple[tuple[Memslot, ...], int]:
    """RAM banks take slots 0..n-1 in description order; a region outside RAM gets slot n.

    KVM only accepts a PVTIME_IPA whose page lies in a memslot (``pvtime.c``
    ``kvm_arm_pvtime_set_attr``, docs/pvtime-and-dt.md §2).  A carved region stays in its
    bank's slot (one memslot fewer).
    """
    slots = [Memslot(b.index, b.range, Purpose.RAM, b) for b in desc.memory]
    if host_bank is not None:
        return tuple(slots), host_bank.index
    slots.append(Memslot(len(slots), region, Purpose.STOLEN_TIME, None))
    return tuple(slots), len(slots) - 1


def excluded_range(desc: VmDescription, region: Range) -> Range:
    """What ``/memory`` leaves out around the region when it is excluded.

    The region itself, except under a VMM that keeps a whole area out of
    ``/memory`` (Firecracker's system memory, docs/vmm-layouts.md §5): then that area.
    """
    system = profiles.for_description(desc).system_memory
    return system if system is not None and system.contains(region) else region


def memory_nodes(desc: VmDescription, region: Range, describe: Describe) -> tuple[MemoryNode, ...]:
    """The ``/memory`` ranges: every bank, minus the region when it is excluded."""
    nodes: list[MemoryNode] = []
    hole = excluded_range(desc, region)
    for bank in desc.memory:
        cut = describe in (Describe.EXCLUDE, Describe.ACPI)
        pieces = bank.range.minus(hole) if cut else (bank.range,)
        nodes.extend(MemoryNode(p, bank.numa_node, bank) for p in pieces)
    return tuple(sorted(nodes, key=lambda n: n.range.base))


def allocate(desc: VmDescription) -> Layout:
    """Allocate the region for a validated description and prove the result safe."""
    size = profiles.region_size(desc)
    region, host_bank = choose_region(desc, size)
    describe = resolve_describe(desc, host_bank)
    slots, region_slot = memslots(desc, region, host_bank)
    layout = Layout(
        description=desc,
        region=region,
        placement=desc.stolen_time.placement,
        describe=describe,
        memslots=slots,
        region_memslot=region_slot,
        memory_nodes=memory_nodes(desc, region, describe),
        reserved=(region,) if describe is Describe.RESERVED_MEMORY else (),
        host_bank=host_bank,
    )
    verify(layout)
    return layout


def belief(layout: Layout) -> beliefs.Belief:
    """What the layout's boot consumer believes about the tree pvdesc emits for it.

    The emitted DT has root ``/memory`` nodes, a ``/reserved-memory`` with the
    root's cells and ``ranges``, and ``no-map`` children, so Linux and EDK2 read
    the same RAM from it; only the no-map children differ (EDK2 ignores them).
    """
    desc = layout.description
    return beliefs.of_parts(
        desc.boot,
        ((n.range, f"/memory ({n.range})", n.numa_node) for n in layout.memory_nodes),
        ((r, f"/reserved-memory no-map ({r})") for r in layout.reserved),
        ((d.range, f"devices[{d.index}] ({d.name})") for d in desc.devices),
    )


def verify(layout: Layout) -> None:
    """Check the safety invariants of a layout, independently of how it was made.

    The region must be whole 64-byte structures on the VMM's alignment, inside
    the IPA space; then :func:`pvdesc.audit.check.judge`, the rules ``pvdesc check``
    applies to any DTB, judges what the boot consumer believes about the layout
    (:func:`belief`): pvdesc's own layouts must give no error *and* no warning
    (no 64 KiB granule shared with RAM or a device).  Raises :class:`LayoutError`
    (never ``assert``, which ``python -O`` drops) naming the finding's code.
    A region at 0 is refused too: the C lookup's 0 for an out-of-range vCPU
    must never be a real IPA.
    """
    desc = layout.description
    region = layout.region
    align = profiles.for_description(desc).region_align
    if region.base % align or region.size <= 0 or region.size % kvm.PVTIME_STRUCT_SIZE:
        raise LayoutError(f"internal: region {region} is not {align:#x}-aligned whole structures")
    if region.end > desc.ipa_limit:
        raise LayoutError(f"internal: region {region} exceeds the IPA space")
    if region.base == 0:
        raise LayoutError(f"internal: region {region} gives vCPU 0 the IPA 0")
    for f in check.judge(belief(layout), target(layout)):
        if f.severity is not Severity.INFO:
            raise LayoutError(f"internal: {f.code}: {f.source}: {f.message}")


def rationale(layout: Layout) -> str:
    """One sentence: why the guest never uses the region as RAM."""
    slot = layout.region_memslot
    if layout.describe is Describe.NONE:
        return (
            "it lies outside every /memory node and shares no 64 KiB granule with RAM or a "
            "device, so neither Linux nor EDK2 ever counts it as RAM; KVM reaches it through "
            f"its own memslot {slot}"
        )
    if layout.describe is Describe.ACPI:
        where = (
            f"cut out of memory[{layout.host_bank.index}]'s /memory node"
            if layout.host_bank is not None
            else "outside every /memory node"
        )
        return (
            f"it lies {where}, so EDK2's UEFI memory map (the only RAM an ACPI guest sees) never "
            f"includes it, and the SSDT's PNP0C02 device claims it so no driver is given it; KVM "
            f"reaches it through memslot {slot}"
        )
    bank = layout.host_bank
    if bank is None:
        raise LayoutError(f"internal: describe {layout.describe} without a host bank")
    if layout.describe is Describe.EXCLUDE:
        return (
            f"it is cut out of memory[{bank.index}]'s /memory node, so the guest (and EDK2's UEFI "
            f"memory map) never sees RAM there; KVM reaches it through RAM memslot {slot}"
        )
    return (
        f"memory[{bank.index}]'s /memory node covers it but /reserved-memory marks it no-map, so "
        "Linux (booted directly from the DT) drops it from the linear map and never allocates "
        f"it; KVM reaches it through RAM memslot {slot}"
    )
