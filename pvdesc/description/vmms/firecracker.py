"""Firecracker's memory map (firecracker 81b38b9d src/vmm/src/arch/aarch64/layout.rs).

Every constant cites ``docs/vmm-layouts.md`` ("layouts") §5 and the upstream file that
section names.  The region's offset inside system memory is not pinned down upstream,
so the profile makes the user state it (``placement: fixed``).
"""

from __future__ import annotations

from pvdesc import kvm
from pvdesc.core.model import Describe, Vmm
from pvdesc.core.ranges import Range
from pvdesc.description.vmm_profile import MemMapEntry, Profile, SizeRule

# layouts §5: src/vmm/src/arch/aarch64/layout.rs, builder.rs:540-581 (firecracker 81b38b9d).
FIRECRACKER_MEMMAP: tuple[MemMapEntry, ...] = (
    MemMapEntry("gic-dist", 0x3FFF0000, 0x00010000),  # MMIO32_MEM_START - 64 KiB
    MemMapEntry("pci-mmconfig", 0x70000000, 0x10000000),  # PCI_MMCONFIG_START = 2G - 256M
)
#: layouts §5: ``DRAM_MEM_START 0x8000_0000``; ``SYSTEM_MEM_START = DRAM_MEM_START``,
#: ``SYSTEM_MEM_SIZE 0x20_0000`` (layout.rs:55-65); ``memory@ram`` starts after it (fdt.rs).
FIRECRACKER_RAM_BASE = 0x80000000
FIRECRACKER_SYSTEM_MEMORY = Range(0x80000000, 0x200000)
#: layouts §5: ``MAX_SUPPORTED_VCPUS: u8 = 32`` (vmm_config/machine_config.rs:13).
FIRECRACKER_MAX_VCPUS = 32

FIRECRACKER = Profile(
    vmm=Vmm.FIRECRACKER,
    title="Firecracker >= 1.13 (snapshot 81b38b9d)",
    ram_base=FIRECRACKER_RAM_BASE,
    max_banks=1,
    numa=False,
    vcpu_hotplug=False,
    max_vcpus=FIRECRACKER_MAX_VCPUS,
    memmap=FIRECRACKER_MEMMAP,
    size_rule=SizeRule.PER_VCPU,  # size = 64 * vcpu_count (builder.rs)
    region_align=kvm.PVTIME_IPA_ALIGN,  # alignment 64, AllocPolicy::LastMatch
    system_memory=FIRECRACKER_SYSTEM_MEMORY,
    describe=Describe.EXCLUDE,  # cut out of memory@ram, no node (fdt.rs:223-255)
    requires_fixed=True,
    confirmed="confirmed: region inside [0x80000000, +2 MiB) system memory, 64 B aligned, "
    "64 x vcpus, excluded from /memory, <= 32 vCPUs (layouts §5); UNCONFIRMED: the exact "
    "offset (vmgenid/vmclock are allocated first), so placement fixed with a base is required",
    configurable=(
        "memory: mem_size_mib (one bank at 0x80000000)",
        "vcpus: vcpu_count (max_vcpus = vcpus, <= 32)",
        "stolen_time.base: must be given (read it from the running VMM)",
    ),
    source="docs/vmm-layouts.md §5; firecracker src/vmm/src/builder.rs, "
    "src/vmm/src/arch/aarch64/{layout,fdt}.rs",
    version="81b38b9d",
    version_text="Firecracker 81b38b9d (>= 1.13)",
    upstream="src/vmm/src/arch/aarch64/layout.rs",
)
