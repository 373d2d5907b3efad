"""QEMU virt's memory map (QEMU v10.2.0 hw/arm/virt.c ``base_memmap[]``, ``extended_memmap[]``).

Every constant cites ``docs/vmm-layouts.md`` ("layouts") §1 and the upstream file that
section names.
"""

from __future__ import annotations

from pvdesc.core.model import Describe, Vmm
from pvdesc.description.vmm_profile import GiB, KiB, MemMapEntry, MiB, Profile, SizeRule, round_up

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
        round_up(QEMU_VIRT_MEM_BASE + ram_size, GiB), QEMU_VIRT_MEM_BASE + QEMU_LEGACY_RAMLIMIT
    )
    out: list[MemMapEntry] = []
    for entry in QEMU_VIRT_HIGH_MEMMAP:
        region_base = round_up(base, entry.size)
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
