"""crosvm's memory maps: the current one (f1e797a6) and the one before 0465b61b (00ab01e9).

Both read from crosvm's aarch64/src/lib.rs; the current one is cited to
``docs/vmm-layouts.md`` ("layouts") §3.
"""

from __future__ import annotations

from pvdesc.core.model import Describe, Vmm
from pvdesc.description.vmm_profile import MemMapEntry, Profile, SizeRule

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

CROSVM_2022 = CROSVM._replace(
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
