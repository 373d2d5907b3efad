"""kvmtool's memory map (kvmtool b48735e5 arm/include/arm-common/kvm-arch.h).

Every constant cites ``docs/vmm-layouts.md`` ("layouts") §2 and the upstream file that
section names.
"""

from __future__ import annotations

from pvdesc.core.model import Describe, Vmm
from pvdesc.description.vmm_profile import MemMapEntry, Profile, SizeRule

# layouts §2: arm/include/arm-common/kvm-arch.h:15-67 (kvmtool b48735e5).
KVMTOOL_MEMMAP: tuple[MemMapEntry, ...] = (
    MemMapEntry("pci-io", 0x00000000, 0x00010000),  # PCI I/O at 0-64 KiB
    MemMapEntry("uart", 0x01000000, 0x00010000),  # ARM_UART_MMIO_BASE = ARM_MMIO_AREA
    MemMapEntry("rtc", 0x01010000, 0x00010000),  # ARM_RTC_MMIO_BASE
    MemMapEntry("flash", 0x02000000, 0x01000000),  # KVM_FLASH_MMIO_BASE 32 MiB (16 MiB)
    MemMapEntry("gic-dist", 0x3FFF0000, 0x00010000),  # ARM_GIC_DIST_BASE = 1 GiB - 64 KiB
    MemMapEntry("pci-cfg", 0x40000000, 0x10000000),  # KVM_PCI_CFG_AREA at 1 GiB (256 MiB)
    MemMapEntry("pci-mmio", 0x50000000, 0x30000000),  # PCI MMIO up to 2 GiB
)
#: ``ARM_GIC_REDIST_SIZE`` 0x20000 per vCPU, below the distributor (layouts §2).
KVMTOOL_GIC_REDIST_PER_VCPU = 0x20000
#: layouts §2: ``ARM_PVTIME_BASE = ARM_RTC_MMIO_BASE + ARM_RTC_MMIO_SIZE`` = 0x01020000,
#: ``ARM_PVTIME_SIZE SZ_64K`` (arm/include/arm-common/kvm-arch.h, arm/aarch64/pvtime.c).
KVMTOOL_PVTIME = MemMapEntry("ARM_PVTIME_BASE", 0x01020000, 0x00010000)
#: layouts §2: ``ARM_MEMORY_AREA 0x80000000``; the RAM base may not go below it
#: (arm/aarch64/kvm.c:44-57).  It is moved with ``-m/--mem size[@addr]``: builtin-run.c
#: ``mem_parser`` with ``ARCH_HAS_CFG_RAM_ADDRESS``, from "[PATCH v3 kvmtool 13/13] arm64:
#: Allow the user to specify the RAM base address" (Alexandru Elisei,
#: <20220525112345.121321-14-alexandru.elisei@arm.com>, reviewed by Andre Przywara), which
#: also dies with "RAM address is below the I/O region" under 2 GiB.  The reference's
#: "--ram-addr" is loose wording for this option.
KVMTOOL_RAM_BASE = 0x80000000

KVMTOOL = Profile(
    vmm=Vmm.KVMTOOL,
    title="kvmtool (snapshot b48735e5)",
    ram_base=KVMTOOL_RAM_BASE,
    ram_base_min=KVMTOOL_RAM_BASE,
    ram_base_option="--mem SIZE@ADDR",
    max_banks=1,  # one /memory node: reg = {memory_guest_start, ram_size} (arm/fdt.c)
    numa=False,
    vcpu_hotplug=False,
    memmap=KVMTOOL_MEMMAP,
    stolen_time=KVMTOOL_PVTIME,
    size_rule=SizeRule.SLOT,
    describe=Describe.NONE,  # DT: nothing (layouts §2)
    confirmed="confirmed: base 0x01020000, fixed 64 KiB, RAM >= 0x80000000, UART/RTC/GIC/PCI "
    "map (layouts §2); UNCONFIRMED: virtio-mmio window size (not modelled)",
    configurable=(
        "memory: --mem SIZE[@ADDR] (one bank, base >= 0x80000000)",
        "vcpus: --cpus (no hotplug: max_vcpus = vcpus)",
    ),
    source="docs/vmm-layouts.md §2; kvmtool arm/include/arm-common/kvm-arch.h, "
    "arm/aarch64/pvtime.c, arm/aarch64/kvm.c, builtin-run.c",
    version="b48735e5",
    version_text="kvmtool b48735e5 (2024-08-30)",
    upstream="arm/include/arm-common/kvm-arch.h",
)
