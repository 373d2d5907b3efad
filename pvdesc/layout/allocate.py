"""Allocate the stolen-time region: a description in, a verified :class:`Layout` out.

The whole guest address map is visible in a :class:`Layout` (in the spirit of
QEMU's ``base_memmap[]``): RAM banks, the memslots KVM gets, the ``/memory``
ranges the firmware description states, ``/reserved-memory`` carve-outs, and the
region with its per-vCPU IPAs.  Where the region goes is decided by
:mod:`pvdesc.layout.placement`; :func:`verify` judges every layout with
:func:`pvdesc.layout.rules.judge` before it is returned.

Each rule is a small function whose docstring cites its source.  References:
``docs/pvtime-and-dt.md``, ``docs/vmm-layouts.md``,
``docs/boot-evidence.md`` and ``docs/acpi.md``.
"""

from __future__ import annotations

from functools import cached_property
from typing import NamedTuple

from pvdesc import kvm
from pvdesc.core.findings import Severity
from pvdesc.core.model import Describe, Memslot, Placement, Purpose, RamBank, Target, VmDescription
from pvdesc.core.ranges import Labelled, Range
from pvdesc.description import profiles
from pvdesc.errors import LayoutError
from pvdesc.layout import beliefs, rules
from pvdesc.layout.placement import choose_region, resolve_describe


class MemoryNode(NamedTuple):
    """A range the firmware description states is RAM (a DT ``/memory`` node), and its bank.

    Attributes:
        ram: the range, labelled as the emitted tree states it (``/memory (BASE-LAST)``),
            with the bank's NUMA node id.
        bank: the RAM bank it comes from.
    """

    ram: Labelled
    bank: RamBank

    @classmethod
    def of(cls, r: Range, bank: RamBank) -> MemoryNode:
        """The ``/memory`` node stating ``r``, a piece of ``bank``."""
        return cls(Labelled(r, f"/memory ({r})", bank.numa_node), bank)

    @property
    def range(self) -> Range:
        """The range."""
        return self.ram.range

    @property
    def numa_node(self) -> int | None:
        """Its NUMA node id, or ``None``."""
        return self.ram.numa_node


class _LayoutFields(NamedTuple):
    """The fields of :class:`Layout`, which documents them."""

    description: VmDescription
    region: Range
    placement: Placement
    describe: Describe
    memslots: tuple[Memslot, ...]
    region_memslot: int
    memory_nodes: tuple[MemoryNode, ...]
    reserved: tuple[Range, ...]
    host_bank: RamBank | None


class Layout(_LayoutFields):
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

    # No __slots__: the instance dict holds what cached_property computes.

    @property
    def vcpu_ipas(self) -> tuple[int, ...]:
        """``base + 64 * id`` for every possible vCPU, 0..max_vcpus-1."""
        return tuple(kvm.pvtime_ipa(self.region.base, i) for i in range(self.description.max_vcpus))

    @cached_property
    def usable_ram(self) -> tuple[Range, ...]:
        """What the guest may allocate, as the boot consumer believes it (:func:`belief`).

        Computed once per layout (the layout is frozen): prove and its guest checks ask
        for it again and again.
        """
        return belief(self).usable_ram

    @property
    def dedicated_memslot(self) -> bool:
        """True when the region has a memslot of its own (hole/fixed outside RAM)."""
        return self.memslots[self.region_memslot].purpose is Purpose.STOLEN_TIME


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
        nodes.extend(MemoryNode.of(p, bank) for p in pieces)
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
        (n.ram for n in layout.memory_nodes),
        (Labelled(r, f"/reserved-memory no-map ({r})") for r in layout.reserved),
        (Labelled(d.range, f"devices[{d.index}] ({d.name})") for d in desc.devices),
    )


def verify(layout: Layout) -> None:
    """Check the safety invariants of a layout, independently of how it was made.

    The region must be whole 64-byte structures on the VMM's alignment, inside
    the IPA space; then :func:`pvdesc.layout.rules.judge`, the rules ``pvdesc check``
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
    for f in rules.judge(belief(layout), target(layout)):
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


def target(layout: Layout, source: str = "layout") -> Target:
    """What the config written for ``layout`` tells the hypervisor, straight from the layout."""
    return Target(
        region=layout.region,
        vcpu_ipas=tuple(enumerate(layout.vcpu_ipas)),
        ipa_bits=layout.description.ipa_bits,
        memslots=tuple(Memslot(s.slot, s.range, s.purpose) for s in layout.memslots),
        source=source,
    )
