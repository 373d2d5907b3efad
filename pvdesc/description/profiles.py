"""Find a description's VMM profile and merge it in, refusing any value the VMM fixes.

The profiles are data (:mod:`pvdesc.description.vmms`, the types in
:mod:`pvdesc.description.vmm_profile`).  :func:`apply` merges a profile into a
description: the profile's MMIO windows become devices (after the user's own), the
region's placement becomes the VMM's, and any description value that contradicts a
value the VMM fixes is refused with an error naming the VMM's value.
:func:`region_size` sizes the region by the VMM's :class:`SizeRule`.

Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Collection

from pvdesc import kvm
from pvdesc.core.model import Describe, Device, Placement, StolenTimeSpec, VmDescription, Vmm
from pvdesc.core.units import human
from pvdesc.description.vmm_profile import MemMapEntry, Profile, SizeRule, round_up
from pvdesc.description.vmms import OLDER, PROFILES
from pvdesc.description.vmms.kvmtool import KVMTOOL_GIC_REDIST_PER_VCPU
from pvdesc.description.vmms.qemu_virt import qemu_high_memmap
from pvdesc.errors import DescriptionError, KeyPath


def versions(vmm: Vmm) -> tuple[Profile, ...]:
    """Every memory map pvdesc knows for ``vmm``: the default (newest) first."""
    return (PROFILES[vmm], *OLDER.get(vmm, ()))


def profile(vmm: Vmm, version: str | None = None) -> Profile:
    """The profile for ``vmm``: its newest map, or the one read from ``version``.

    An unknown ``version`` is a :class:`DescriptionError` on ``vmm_version`` naming the
    known ones.
    """
    if version is None:
        return PROFILES[vmm]
    known = [p for p in versions(vmm) if p.version]
    for p in known:
        if p.version == version:
            return p
    names = ", ".join(p.version for p in known) or "none: pvdesc's own rules have no versions"
    raise _err(f"{vmm.value} has no memory map for version {version!r}; known: {names}", VERSION)


def for_description(desc: VmDescription) -> Profile:
    """The profile a description asks for (``vmm`` and ``vmm_version``)."""
    return profile(desc.vmm, desc.vmm_version)


def model_text(desc: VmDescription) -> str:
    """Which VMM map a description's outputs follow, for generated files' headers."""
    p = for_description(desc)
    if not p.version:
        return f"{p.vmm.value}, {p.version_text}"
    return f"{p.vmm.value}, memory map of {p.version_text}"


def memmap(p: Profile, desc: VmDescription) -> tuple[MemMapEntry, ...]:
    """The profile's MMIO windows for this description (sizes that depend on it resolved)."""
    extra: tuple[MemMapEntry, ...] = ()
    if p.vmm is Vmm.QEMU_VIRT:
        ram = sum(b.range.size for b in desc.memory)
        extra = qemu_high_memmap(ram, desc.ipa_bits)
    elif p.vmm in (Vmm.KVMTOOL, Vmm.FIRECRACKER):
        # GICv3 redistributors: 0x20000 per vCPU below the distributor (layouts §2, §5:
        # kvmtool ARM_GIC_REDIST_SIZE; firecracker gic/gicv3/mod.rs:31-51).
        size = KVMTOOL_GIC_REDIST_PER_VCPU * desc.max_vcpus
        extra = (MemMapEntry("gic-redist", 0x3FFF0000 - size, size),)
    return p.memmap + extra


def region_size(desc: VmDescription) -> int:
    """The region's size under the description's VMM (see :class:`SizeRule`)."""
    p = for_description(desc)
    raw = desc.max_vcpus * kvm.PVTIME_STRUCT_SIZE
    if p.size_rule is SizeRule.HOST_PAGE:
        return round_up(raw, p.host_page)
    if p.size_rule is SizeRule.SLOT and p.stolen_time is not None:
        return p.stolen_time.size
    if p.size_rule is SizeRule.PER_VCPU:
        return raw
    # 64 bytes per vCPU (pvclock-abi.h), in whole 64 KiB pages because pvtime.rst advises
    # "one or more 64k pages are set aside for the purpose of these structures and not
    # used for other purposes" (docs/pvtime-and-dt.md §1); a 64 KiB multiple is also a whole number
    # of host pages for 4K, 16K and 64K hosts, which a memslot needs.
    return round_up(raw, kvm.GRANULE)


def _err(message: str, where: KeyPath) -> DescriptionError:
    return DescriptionError(message, where)


VERSION: KeyPath = ("vmm_version",)


def _check_memory(p: Profile, desc: VmDescription) -> None:
    name = p.vmm.value
    if p.max_banks is not None and len(desc.memory) > p.max_banks:
        raise _err(
            f"{name} makes {p.max_banks} RAM bank(s); this description has {len(desc.memory)}",
            ("memory",),
        )
    if not p.numa and desc.numa:
        bank = next(b for b in desc.memory if b.numa_node is not None)
        raise _err(f"{name} has no NUMA topology option; remove numa_node", (*bank.path,))
    system = p.system_memory
    for bank in desc.memory:
        if system is not None and not bank.range.minus(system):
            # Firecracker cuts its system-memory area out of the bank's /memory node
            # (fdt.rs); with nothing left the guest's DT would have no /memory at all.
            raise _err(
                f"memory[{bank.index}] {bank.range} lies within {name}'s {human(system.size)} "
                f"system memory {system}, which is kept out of /memory, so the guest would have "
                f"no RAM at all; a VM must keep some RAM: make the bank larger than "
                f"{human(system.size)}",
                (*bank.path, "size"),
            )
    if p.ram_base is None:
        return
    first = desc.memory[0]
    base = first.range.base
    if p.ram_base_option is None and base != p.ram_base:
        raise _err(
            f"memory[0].base {base:#x} conflicts with {name}'s fixed RAM base {p.ram_base:#010x}",
            (*first.path, "base"),
        )
    if p.ram_base_min is not None and base < p.ram_base_min:
        raise _err(
            f"memory[0].base {base:#x} is below {name}'s lowest RAM base {p.ram_base_min:#010x}",
            (*first.path, "base"),
        )
    if p.ram_contiguous:
        cursor = p.ram_base
        for bank in desc.memory:
            if bank.range.base != cursor:
                raise _err(
                    f"memory[{bank.index}].base {bank.range.base:#x}: {name} lays RAM out as one "
                    f"range from {p.ram_base:#x} split in bank order, so this bank must start at "
                    f"{cursor:#x}",
                    (*bank.path, "base"),
                )
            if desc.numa and bank.numa_node != bank.index:
                raise _err(
                    f"{name} numbers NUMA nodes in address order (hw/arm/boot.c), so memory"
                    f"[{bank.index}] must be numa_node {bank.index}",
                    (*bank.path, "numa_node"),
                )
            cursor = bank.range.end


def _check_vcpus(p: Profile, desc: VmDescription) -> None:
    name = p.vmm.value
    if not p.vcpu_hotplug and desc.max_vcpus != desc.vcpus:
        raise _err(
            f"max_vcpus {desc.max_vcpus} conflicts with {name}: it has no vCPU hotplug, so "
            f"max_vcpus must equal vcpus ({desc.vcpus})",
            ("max_vcpus",),
        )
    if desc.max_vcpus > p.max_vcpus:
        raise _err(
            f"max_vcpus {desc.max_vcpus} exceeds {name}'s limit {p.max_vcpus}", ("max_vcpus",)
        )


def _stolen_time(p: Profile, desc: VmDescription, written: Collection[KeyPath]) -> StolenTimeSpec:
    name = p.vmm.value
    st = desc.stolen_time
    wrote_placement = ("stolen_time", "placement") in written
    wrote_describe = ("stolen_time", "describe") in written
    if p.describe is not None and wrote_describe and st.describe not in (Describe.AUTO, p.describe):
        raise _err(
            f"stolen_time.describe {st.describe} conflicts with {name}'s own devicetree, which "
            f"keeps the guest off the region by {p.describe}",
            ("stolen_time", "describe"),
        )
    describe = p.describe if p.describe is not None else st.describe
    if p.stolen_time is not None:
        fixed = p.stolen_time
        label = f"{name}'s fixed {fixed.name} {fixed.base:#010x}"
        if wrote_placement and st.placement is not Placement.FIXED:
            raise _err(
                f"stolen_time.placement {st.placement} conflicts with {label}",
                ("stolen_time", "placement"),
            )
        if st.base is not None and st.base != fixed.base:
            raise _err(
                f"stolen_time.base {st.base:#x} conflicts with {label}", ("stolen_time", "base")
            )
        return StolenTimeSpec(Placement.FIXED, fixed.base, describe)
    if p.requires_fixed:
        if st.placement is not Placement.FIXED or st.base is None:
            raise _err(
                f"{name} places the region itself at an offset the reference does not confirm "
                f"(inside {p.system_memory}); give placement: fixed with the base it uses",
                ("stolen_time", "placement"),
            )
        return st._replace(describe=describe)
    return st


def apply(desc: VmDescription, written: Collection[KeyPath] = ()) -> VmDescription:
    """Merge the description's VMM profile into it; refuse values the VMM fixes.

    ``written`` holds the key paths the user actually wrote (so a default is not taken
    for an override).  The profile's MMIO windows are appended to the user's devices as
    ``<vmm>:<name>`` so the allocator and its checks see the whole map.
    """
    p = for_description(desc)
    if p.unsupported is not None:
        raise _err(p.unsupported, ("vmm",))
    if desc.vmm is Vmm.GENERIC_KVM:
        return desc
    _check_memory(p, desc)
    _check_vcpus(p, desc)
    if p.size_rule is SizeRule.HOST_PAGE and p.stolen_time is not None:
        size = region_size(desc)
        if size > p.stolen_time.size:
            # QEMU exits: "pvtime requires a ... byte memory region for %d CPUs, but only ...
            # has been reserved" (layouts §1, virt_post_cpus_gic_realized()).
            raise _err(
                f"{p.vmm.value} needs a {size:#x}-byte stolen-time region for {desc.max_vcpus} "
                f"vCPUs, but only {p.stolen_time.size:#x} is reserved at {p.stolen_time.name}",
                ("max_vcpus",),
            )
    spec = _stolen_time(p, desc, written)
    start = len(desc.devices)
    extra = tuple(
        Device(f"{p.vmm.value}:{e.name}", e.range, start + i) for i, e in enumerate(memmap(p, desc))
    )
    return desc._replace(devices=desc.devices + extra, stolen_time=spec)
