"""VMM profiles as data: one table per VMM, in the spirit of QEMU's ``base_memmap[]``.

A :class:`Profile` says where a VMM puts RAM, its MMIO windows, where and how
large it makes the stolen-time region, and which description values that VMM
lets a user configure.  :func:`apply` merges a profile into a description: the
profile's MMIO windows become devices (after the user's own), the region's
placement becomes the VMM's, and any description value that contradicts a value
the VMM fixes is refused with an error naming the VMM's value.

Every constant cites ``docs/vmm-layouts.md`` ("layouts") by section,
and the upstream file that section names.  Values marked UNCONFIRMED are not
pinned down by the sources read; where that matters (Firecracker's offset) the
profile makes the user state the value (``placement: fixed``).

Pure data and pure functions; no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass, replace

from pvdesc import kvm
from pvdesc.core.model import Describe, Device, Placement, StolenTimeSpec, VmDescription, Vmm
from pvdesc.core.ranges import Range
from pvdesc.core.units import human
from pvdesc.errors import DescriptionError, KeyPath

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class MemMapEntry:
    """One MMIO window of a VMM's guest address map.

    Attributes:
        name: the VMM's own name for it (``VIRT_UART0`` becomes ``uart0``).
        base: first address.
        size: length in bytes.
        confirmed: False when the reference does not pin the value down.
    """

    name: str
    base: int
    size: int
    confirmed: bool = True

    @property
    def range(self) -> Range:
        """The window as a :class:`Range`."""
        return Range(self.base, self.size)


class SizeRule(enum.StrEnum):
    """How a VMM sizes the stolen-time region.

    - ``granules``: ``max_vcpus * 64`` rounded up to 64 KiB (pvdesc's own rule).
    - ``host-page``: ``REAL_HOST_PAGE_ALIGN(max_cpus * 64)`` (QEMU).
    - ``slot``: the whole fixed slot, whatever the vCPU count (kvmtool, crosvm).
    - ``per-vcpu``: exactly ``vcpus * 64`` bytes (Firecracker).
    """

    GRANULES = "granules"
    HOST_PAGE = "host-page"
    SLOT = "slot"
    PER_VCPU = "per-vcpu"


@dataclass(frozen=True)
class Profile:
    """Everything pvdesc knows about one VMM.

    Attributes:
        vmm: the ``vmm:`` value.
        title: human name with the source version read.
        unsupported: why the VMM cannot be used (``None`` when it can).
        ram_base: where RAM starts (``None``: anywhere, pvdesc's generic rules).
        ram_base_min: lowest RAM base the VMM accepts when it is configurable.
        ram_base_option: the VMM option that moves RAM (``None``: RAM base is fixed).
        ram_contiguous: RAM is one range split into banks in order (QEMU ``-m`` + NUMA).
        max_banks: how many RAM banks the VMM can make (``None``: any).
        numa: whether the VMM can be given a NUMA topology.
        vcpu_hotplug: whether ``max_vcpus`` may exceed ``vcpus`` (``-smp maxcpus``).
        max_vcpus: the VMM's own vCPU limit.
        memmap: fixed MMIO windows, base_memmap-style.
        stolen_time: the VMM's fixed region slot (``None``: not fixed).
        size_rule: how the region is sized.
        host_page: host page size assumed by ``host-page`` sizing.
        region_align: alignment a fixed base must have.
        system_memory: RAM the VMM keeps out of ``/memory`` and puts the region in.
        describe: how the VMM's own DT keeps the guest off the region.
        requires_fixed: the user must give ``placement: fixed`` with a base.
        confirmed: which values the reference confirms, and which it does not.
        configurable: description values the VMM lets a user choose, and how.
        source: the reference section and upstream files.
        version: the version of the VMM's source the map was read from, as a description's
            ``vmm_version`` names it (a release or a commit; ``""``: none, pvdesc's rules).
        version_text: that version in words, for reports and generated files' headers.
        upstream: the upstream file (and table) the memory map is read from.
    """

    vmm: Vmm
    title: str
    unsupported: str | None = None
    ram_base: int | None = None
    ram_base_min: int | None = None
    ram_base_option: str | None = None
    ram_contiguous: bool = False
    max_banks: int | None = None
    numa: bool = True
    vcpu_hotplug: bool = True
    max_vcpus: int = kvm.KVM_MAX_VCPUS
    memmap: tuple[MemMapEntry, ...] = ()
    stolen_time: MemMapEntry | None = None
    size_rule: SizeRule = SizeRule.GRANULES
    host_page: int = 4 * KiB
    region_align: int = kvm.GRANULE
    system_memory: Range | None = None
    describe: Describe | None = None
    requires_fixed: bool = False
    confirmed: str = ""
    configurable: tuple[str, ...] = ()
    source: str = ""
    version: str = ""
    version_text: str = ""
    upstream: str = ""


# --- QEMU virt ------------------------------------------------------------------------------
# layouts §1 "Rest of the memory map": QEMU v10.2.0 hw/arm/virt.c:171-206, base_memmap[].
# Sizes the reference table leaves blank are base_memmap[]'s own (same file; the test suite
# checks the DT-visible ones against a DTB that qemu-system-aarch64 dumps).
QEMU_VIRT_MEMMAP: tuple[MemMapEntry, ...] = (
    MemMapEntry("flash", 0x00000000, 0x08000000),  # [VIRT_FLASH] 128 MiB
    MemMapEntry("gic-dist", 0x08000000, 0x00010000),  # [VIRT_GIC_DIST]
    MemMapEntry("gic-cpu", 0x08010000, 0x00010000),  # [VIRT_GIC_CPU]
    MemMapEntry("gic-v2m", 0x08020000, 0x00001000),  # [VIRT_GIC_V2M]
    MemMapEntry("gic-hyp", 0x08030000, 0x00010000),  # [VIRT_GIC_HYP]
    MemMapEntry("gic-vcpu", 0x08040000, 0x00010000),  # [VIRT_GIC_VCPU]
    MemMapEntry("gic-its", 0x08080000, 0x00020000),  # [VIRT_GIC_ITS]
    MemMapEntry("gic-redist", 0x080A0000, 0x00F60000),  # [VIRT_GIC_REDIST] "2*64kB*123 CPUs"
    MemMapEntry("uart0", 0x09000000, 0x00001000),  # [VIRT_UART0]
    MemMapEntry("rtc", 0x09010000, 0x00001000),  # [VIRT_RTC]
    MemMapEntry("fw-cfg", 0x09020000, 0x00000018),  # [VIRT_FW_CFG]
    MemMapEntry("gpio", 0x09030000, 0x00001000),  # [VIRT_GPIO]
    MemMapEntry("uart1", 0x09040000, 0x00001000),  # [VIRT_UART1]
    MemMapEntry("smmu", 0x09050000, 0x00020000),  # [VIRT_SMMU]
    MemMapEntry("pcdimm-acpi", 0x09070000, 0x00000018),  # [VIRT_PCDIMM_ACPI] MEMORY_HOTPLUG_IO_LEN
    MemMapEntry("acpi-ged", 0x09080000, 0x00000004),  # [VIRT_ACPI_GED] ACPI_GED_EVT_SEL_LEN
    MemMapEntry("nvdimm-acpi", 0x09090000, 0x00000004),  # [VIRT_NVDIMM_ACPI] NVDIMM_ACPI_IO_LEN
    # [VIRT_PVTIME] 0x090a0000 is the stolen-time slot: QEMU_VIRT_PVTIME below.
    MemMapEntry("secure-gpio", 0x090B0000, 0x00001000),  # [VIRT_SECURE_GPIO]
    MemMapEntry("acpi-pcihp", 0x090C0000, 0x00001000, confirmed=False),  # [VIRT_ACPI_PCIHP] (10.x)
    MemMapEntry("virtio-mmio", 0x0A000000, 32 * 0x200),  # [VIRT_MMIO] 0x200 x 32 transports
    MemMapEntry("platform-bus", 0x0C000000, 0x02000000),  # [VIRT_PLATFORM_BUS] 32 MiB
    MemMapEntry("secure-mem", 0x0E000000, 0x01000000),  # [VIRT_SECURE_MEM]
    MemMapEntry("pcie-mmio", 0x10000000, 0x2EFF0000),  # [VIRT_PCIE_MMIO]
    MemMapEntry("pcie-pio", 0x3EFF0000, 0x00010000),  # [VIRT_PCIE_PIO]
    MemMapEntry("pcie-ecam", 0x3F000000, 0x01000000),  # [VIRT_PCIE_ECAM] 16 MiB
)
#: layouts §1 "Stolen-time region": hw/arm/virt.c:194
#: ``[VIRT_PVTIME] = { 0x090a0000, 0x00010000 }``.
QEMU_VIRT_PVTIME = MemMapEntry("VIRT_PVTIME", 0x090A0000, 0x00010000)
#: layouts §1: ``[VIRT_MEM] = { GiB, LEGACY_RAMLIMIT_BYTES }`` (255 GiB).
QEMU_VIRT_MEM_BASE = 1 * GiB
QEMU_LEGACY_RAMLIMIT = 255 * GiB
#: layouts §1 "Floating high regions" (hw/arm/virt.c ``extended_memmap[]``), in QEMU's order.
#: QEMU 10.2 also has VIRT_CXL_HOST between REDIST2 and ECAM; it is only enabled with
#: ``cxl=on`` and, with the compact high-memory layout (virt >= 7.2), takes no space when off.
QEMU_VIRT_HIGH_MEMMAP: tuple[MemMapEntry, ...] = (
    MemMapEntry("high-gic-redist2", 0, 64 * MiB),  # [VIRT_HIGH_GIC_REDIST2]
    MemMapEntry("high-pcie-ecam", 0, 256 * MiB),  # [VIRT_HIGH_PCIE_ECAM]
    MemMapEntry("high-pcie-mmio", 0, 512 * GiB),  # [VIRT_HIGH_PCIE_MMIO] DEFAULT_..._SIZE_GB 512
)
#: QEMU sizes its region to whole host pages (layouts §1 "Size rule",
#: ``virt_post_cpus_gic_realized()``, hw/arm/virt.c:2136-2186).  pvdesc ASSUMES 4 KiB host
#: pages: the region (and the memslot QEMU creates) is then max_cpus*64 rounded up to 4 KiB.
#: On a 16 KiB or 64 KiB host QEMU's memslot is larger, still inside the 64 KiB slot.
QEMU_HOST_PAGE = 4 * KiB


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


def qemu_high_memmap(ram_size: int, ipa_bits: int) -> tuple[MemMapEntry, ...]:
    """QEMU's floating high regions for ``-m ram_size`` (no ``maxmem``/``slots``).

    ``virt_set_memmap()`` / ``virt_set_high_memmap()`` in QEMU hw/arm/virt.c (layouts §1,
    "Floating high regions ... placed after RAM, at the 256 GiB mark or above, each aligned
    to its own size"):

    - ``device_memory_base = ROUND_UP(VIRT_MEM.base + ram_size, GiB)``; with no hotplug
      slots ``device_memory_size`` is 0, so the high IO base is that, but never below
      ``VIRT_MEM.base + LEGACY_RAMLIMIT_BYTES`` (256 GiB);
    - each region in turn: ``base = ROUND_UP(base, size)``; it is enabled only if it fits
      below ``2**pa_bits``; with ``highmem_compact`` (virt >= 7.2) a disabled region
      does not advance ``base``.

    ``ipa_bits`` plays QEMU's ``pa_bits`` (the host's KVM IPA limit).
    """
    base = max(
        _round_up(QEMU_VIRT_MEM_BASE + ram_size, GiB), QEMU_VIRT_MEM_BASE + QEMU_LEGACY_RAMLIMIT
    )
    out: list[MemMapEntry] = []
    for entry in QEMU_VIRT_HIGH_MEMMAP:
        region_base = _round_up(base, entry.size)
        if region_base + entry.size > 1 << ipa_bits:
            continue  # disabled; compact layout: base does not move
        out.append(MemMapEntry(entry.name, region_base, entry.size))
        base = region_base + entry.size
    return tuple(out)


QEMU_VIRT = Profile(
    vmm=Vmm.QEMU_VIRT,
    title="QEMU virt machine (v10.2.0 source; tested against the installed qemu-system-aarch64)",
    ram_base=QEMU_VIRT_MEM_BASE,
    ram_contiguous=True,
    numa=True,
    vcpu_hotplug=True,
    max_vcpus=512,  # mc->max_cpus = 512 (hw/arm/virt.c:3301, layouts §1)
    memmap=QEMU_VIRT_MEMMAP,
    stolen_time=QEMU_VIRT_PVTIME,
    size_rule=SizeRule.HOST_PAGE,
    host_page=QEMU_HOST_PAGE,
    describe=Describe.NONE,  # no qemu_fdt_* call for pvtime; /memory is RAM only (layouts §1)
    confirmed="confirmed: base 0x090a0000, 64 KiB slot, size rule, RAM at 1 GiB, base_memmap "
    "(layouts §1); ASSUMED: 4 KiB host pages",
    configurable=(
        "memory: -m (RAM size; base fixed at 1 GiB; banks contiguous)",
        "vcpus/max_vcpus: -smp N,maxcpus=M",
        "numa_node: -object memory-backend-ram + -numa node (nodes 0.. in bank order)",
        "ipa_bits: the host KVM IPA limit (high regions that do not fit are disabled)",
    ),
    source="docs/vmm-layouts.md §1; QEMU hw/arm/virt.c base_memmap[], extended_memmap[], "
    "virt_set_memmap(), virt_post_cpus_gic_realized(); include/hw/arm/virt.h",
    version="v10.2.0",
    version_text="QEMU v10.2.0",
    upstream="hw/arm/virt.c base_memmap[], extended_memmap[]",
)

# --- kvmtool --------------------------------------------------------------------------------
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

# --- crosvm ---------------------------------------------------------------------------------
# layouts §3: aarch64/src/lib.rs:101-170 and docs/book/src/appendix/memory_layout.md:61-81
# (crosvm f1e797a6).
CROSVM_MEMMAP: tuple[MemMapEntry, ...] = (
    MemMapEntry("rtc", 0x00002000, 0x00001000),  # RTC at 0x2000
    MemMapEntry("vmwdt", 0x00003000, 0x00001000),  # VMWDT at 0x3000
    MemMapEntry("pci-cam", 0x00010000, 0x01000000),  # PCI CAM at 0x10000 (16 MiB)
    MemMapEntry("pci-mmio-low", 0x02000000, 0x02000000),  # low PCI MMIO 0x2000000 (32 MiB)
    MemMapEntry("gic-cpu", 0x3FFD0000, 0x00020000, confirmed=False),  # size UNCONFIRMED
    MemMapEntry("gic-dist", 0x3FFF0000, 0x00010000),  # distributor at 0x3fff0000
    MemMapEntry("pvmfw", 0x7FC00000, 0x00400000),  # protected-VM firmware (4 MiB)
)
#: layouts §3: ``AARCH64_PVTIME_IPA_START: u64 = 0x1ff0000``, ``AARCH64_PVTIME_IPA_MAX_SIZE =
#: 0x10000`` (crosvm aarch64/src/lib.rs:121-123; memory_layout.md:71 "1ff_0000-200_0000").
#: Note: crosvm's constant has moved between versions (an older tree gives
#: 0x7FDF0000, docs/vmm-layouts.md §3); the f1e797a6 value is used here.
CROSVM_PVTIME = MemMapEntry("AARCH64_PVTIME_IPA_START", 0x01FF0000, 0x00010000)
#: layouts §3: ``AARCH64_PHYS_MEM_START 0x80000000`` (lib.rs:114).
CROSVM_RAM_BASE = 0x80000000

CROSVM = Profile(
    vmm=Vmm.CROSVM,
    title="crosvm (snapshot f1e797a6)",
    ram_base=CROSVM_RAM_BASE,
    max_banks=1,
    numa=False,
    vcpu_hotplug=False,
    memmap=CROSVM_MEMMAP,
    stolen_time=CROSVM_PVTIME,
    size_rule=SizeRule.SLOT,
    describe=Describe.NONE,  # DT: nothing (layouts §3)
    confirmed="confirmed: base 0x01ff0000 (newer snapshot), fixed 64 KiB, RAM at 0x80000000 "
    "(layouts §3); UNCONFIRMED: GIC CPU-interface size, vCPU bound, run-flag syntax",
    configurable=("memory: --mem (size only; base fixed)", "vcpus: --cpus (max_vcpus = vcpus)"),
    source="docs/vmm-layouts.md §3; crosvm aarch64/src/lib.rs, "
    "docs/book/src/appendix/memory_layout.md",
    version="f1e797a6",
    version_text="crosvm f1e797a6 (2026-08-21); the map since 0465b61b (2022-05-04)",
    upstream="aarch64/src/lib.rs",
)

# --- crosvm before 0465b61b ("Move PVTIME down below MMIO_BASE", 2022-05-04) ---------------
# google/crosvm 00ab01e9 (2022-03-10) aarch64/src/lib.rs: AARCH64_PROTECTED_VM_FW_START =
# AARCH64_PHYS_MEM_START - AARCH64_PROTECTED_VM_FW_MAX_SIZE (0x200000) = 0x7fe00000 and
# AARCH64_PVTIME_IPA_START = AARCH64_PROTECTED_VM_FW_START - AARCH64_PVTIME_IPA_MAX_SIZE
# (0x10000) = 0x7fdf0000.  0465b61b moved the slot to AARCH64_MMIO_BASE - 64 KiB to leave
# 1 GiB..RAM free of MMIO and make room for a larger pVM firmware.  The rest of the map is
# the same constants: RTC 0x2000, PCI CAM 0x10000 (16 MiB), MMIO 0x2000000 (32 MiB), GIC
# CPU interface and distributor below AARCH64_AXI_BASE 0x40000000.
CROSVM_2022_MEMMAP: tuple[MemMapEntry, ...] = (
    MemMapEntry("rtc", 0x00002000, 0x00001000),  # AARCH64_RTC_ADDR, AARCH64_RTC_SIZE
    MemMapEntry("pci-cam", 0x00010000, 0x01000000),  # AARCH64_PCI_CFG_BASE, _SIZE
    MemMapEntry("pci-mmio-low", 0x02000000, 0x02000000),  # AARCH64_MMIO_BASE, _SIZE
    MemMapEntry("gic-cpu", 0x3FFD0000, 0x00020000),  # AARCH64_GIC_CPUI_BASE, _SIZE
    MemMapEntry("gic-dist", 0x3FFF0000, 0x00010000),  # AARCH64_GIC_DIST_BASE, _SIZE
    MemMapEntry("pvmfw", 0x7FE00000, 0x00200000),  # AARCH64_PROTECTED_VM_FW_START, _MAX_SIZE
)
CROSVM_2022_PVTIME = MemMapEntry("AARCH64_PVTIME_IPA_START", 0x7FDF0000, 0x00010000)

CROSVM_2022 = replace(
    CROSVM,
    title="crosvm before 0465b61b (snapshot 00ab01e9, 2022-03-10)",
    memmap=CROSVM_2022_MEMMAP,
    stolen_time=CROSVM_2022_PVTIME,
    confirmed="confirmed: base 0x7fdf0000 (AARCH64_PROTECTED_VM_FW_START - 64 KiB), fixed "
    "64 KiB, RAM at 0x80000000, the map's constants (crosvm 00ab01e9 aarch64/src/lib.rs)",
    source="crosvm 00ab01e9 aarch64/src/lib.rs; moved by 0465b61b",
    version="00ab01e9",
    version_text="crosvm 00ab01e9 (2022-03-10); the map before 0465b61b (2022-05-04)",
    upstream="aarch64/src/lib.rs",
)

# --- Firecracker ----------------------------------------------------------------------------
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

CLOUD_HYPERVISOR = Profile(
    vmm=Vmm.CLOUD_HYPERVISOR,
    title="Cloud Hypervisor (snapshot ae44c297)",
    # layouts §4: no pvtime anywhere; only x86 KVM_FEATURE_STEAL_TIME_BIT.
    unsupported="cloud-hypervisor has no arm64 stolen-time (KVM PV time) support, so there is no "
    "region to describe; upstream issue cloud-hypervisor/cloud-hypervisor#8262 tracks it",
    source="docs/vmm-layouts.md §4",
    version="ae44c297",
    version_text="Cloud Hypervisor ae44c297",
)

GENERIC_KVM = Profile(
    vmm=Vmm.GENERIC_KVM,
    title="generic KVM VMM (pvdesc chooses)",
    confirmed="pvdesc's own rules (pvdesc.layout.allocate)",
    configurable=("everything: pvdesc places the region (hole, carve or fixed)",),
    source="docs/pvtime-and-dt.md",
    version_text="pvdesc's own rules (no VMM's map)",
)

PROFILES: dict[Vmm, Profile] = {
    p.vmm: p for p in (QEMU_VIRT, KVMTOOL, CROSVM, FIRECRACKER, CLOUD_HYPERVISOR, GENERIC_KVM)
}


#: Older memory maps a description can still ask for with ``vmm_version``, newest first.
OLDER: dict[Vmm, tuple[Profile, ...]] = {Vmm.CROSVM: (CROSVM_2022,)}


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


# --------------------------------------------------------------------- pvdesc profiles

#: ``pvdesc profiles --format json``'s format.
LIST_FORMAT = "pvdesc.profiles/1"


@dataclass(frozen=True)
class MapRow:
    """One range of a profile's memory map, as ``pvdesc profiles`` lists it.

    Attributes:
        kind: ``stolen-time``, ``ram`` or ``mmio``.
        name: the VMM's own name for it.
        base: first address.
        size: bytes (``None``: RAM, whose size the description gives).
        confirmed: False where pvdesc could not pin the value down upstream.
    """

    kind: str
    name: str
    base: int
    size: int | None
    confirmed: bool = True


def map_rows(p: Profile) -> tuple[MapRow, ...]:
    """A profile's fixed memory map, in address order (RAM with its base only)."""
    rows = [MapRow("mmio", e.name, e.base, e.size, e.confirmed) for e in p.memmap]
    if p.stolen_time is not None:
        st = p.stolen_time
        rows.append(MapRow("stolen-time", st.name, st.base, st.size, st.confirmed))
    if p.system_memory is not None:
        rows.append(
            MapRow(
                "stolen-time",
                "system memory (holds it)",
                p.system_memory.base,
                p.system_memory.size,
            )
        )
    if p.ram_base is not None:
        rows.append(MapRow("ram", "ram", p.ram_base, None))
    return tuple(sorted(rows, key=lambda r: (r.base, r.kind)))


def listing() -> tuple[tuple[Profile, bool], ...]:
    """Every profile pvdesc knows, each VMM's default first: ``(profile, is_default)``."""
    return tuple((p, i == 0) for vmm in PROFILES for i, p in enumerate(versions(vmm)))


def to_json() -> str:
    """``pvdesc profiles --format json``."""
    import json

    doc = {
        "format": LIST_FORMAT,
        "profiles": [
            {
                "vmm": p.vmm.value,
                "version": p.version,
                "version_text": p.version_text,
                "default": default,
                "supported": p.unsupported is None,
                "upstream": p.upstream,
                "region_rule": str(p.size_rule),
                "memory_map": [
                    {
                        "kind": r.kind,
                        "name": r.name,
                        "base": r.base,
                        "size": r.size,
                        "confirmed": r.confirmed,
                    }
                    for r in map_rows(p)
                ],
            }
            for p, default in listing()
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def _size(size: int | None) -> str:
    from pvdesc.core.units import human

    return "(size from the description)" if size is None else f"{size:#010x}  {human(size)}"


def to_text() -> str:
    """``pvdesc profiles``: each profile's version, source and memory map."""
    lines: list[str] = []
    for p, default in listing():
        pick = "default" if default else f"vmm_version: {p.version}"
        head = f"{p.vmm.value}  {p.version_text or '-'}  ({pick})"
        lines.append(head)
        if p.unsupported is not None:
            lines.append(f"  unsupported: {p.unsupported}")
        elif not p.version:
            lines.append("  pvdesc places the region (hole, carve or fixed): no fixed map")
        else:
            lines.append(f"  source: {p.upstream}")
        for r in map_rows(p):
            mark = "" if r.confirmed else "  (unconfirmed)"
            lines.append(f"  {r.kind:<11}  {r.name:<24}  {r.base:#012x}  {_size(r.size)}{mark}")
        lines.append("")
    return "\n".join(lines)


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
        return _round_up(raw, p.host_page)
    if p.size_rule is SizeRule.SLOT and p.stolen_time is not None:
        return p.stolen_time.size
    if p.size_rule is SizeRule.PER_VCPU:
        return raw
    # 64 bytes per vCPU (pvclock-abi.h), in whole 64 KiB pages because pvtime.rst advises
    # "one or more 64k pages are set aside for the purpose of these structures and not
    # used for other purposes" (docs/pvtime-and-dt.md §1); a 64 KiB multiple is also a whole number
    # of host pages for 4K, 16K and 64K hosts, which a memslot needs.
    return _round_up(raw, kvm.GRANULE)


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
        return replace(st, describe=describe)
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
    return replace(desc, devices=desc.devices + extra, stolen_time=spec)
