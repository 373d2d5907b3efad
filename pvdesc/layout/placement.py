"""Where the stolen-time region goes, and how the description keeps the guest off it.

The placement rules (``hole``, ``carve``, ``fixed``) and the resolution of
``describe``: pure functions of a :class:`~pvdesc.core.model.VmDescription`, each
citing its source.  :mod:`pvdesc.layout.allocate` builds the layout from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pvdesc import kvm
from pvdesc.core.model import Boot, Describe, Placement, RamBank, VmDescription
from pvdesc.core.ranges import Range, merged
from pvdesc.core.units import human
from pvdesc.description import profiles
from pvdesc.errors import LayoutError


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
