"""KVM arm64 paravirtualised stolen-time ABI: the constants pvdesc relies on.

Every value names where it comes from; the details are collected in
``docs/pvtime-and-dt.md`` (abbreviated "ref" below).
"""

from __future__ import annotations

#: Size of ``struct pvclock_vcpu_stolen_time``: ``__le32 revision; __le32 attributes;
#: __le64 stolen_time; u8 padding[48]`` -- "Structure must be 64 byte aligned, pad to
#: that size" (Linux ``arch/arm64/include/asm/pvclock-abi.h``; ref §1).
PVTIME_STRUCT_SIZE = 64

#: ``KVM_ARM_VCPU_PVTIME_IPA`` must be 64-byte aligned, else -EINVAL
#: (``Documentation/virt/kvm/devices/vcpu.rst`` §3.1; ``arch/arm64/kvm/pvtime.c``; ref §1-2).
PVTIME_IPA_ALIGN = 64

#: "It is advisable that one or more 64k pages are set aside for the purpose of these
#: structures and not used for other purposes" (``Documentation/virt/kvm/arm/pvtime.rst``;
#: Mark Rutland's review: no 64K granule shared with MMIO or RAM; ref §1).
GRANULE = 0x10000

#: The only structure revision defined: "Must be 0 for version 1.0" (pvtime.rst; ref §1).
PVTIME_REVISION = 0

#: vCPU device-attribute group and attribute (``arch/arm64/include/uapi/asm/kvm.h``; ref §1).
KVM_ARM_VCPU_PVTIME_CTRL = 2
KVM_ARM_VCPU_PVTIME_IPA = 0

#: SMCCC function IDs: OWNER_STANDARD_HYP (5), SMC64 fast calls 0x20/0x21
#: (``include/linux/arm-smccc.h``; pvtime.rst; ref §1-2).
PV_TIME_FEATURES = 0xC5000020
PV_TIME_ST = 0xC5000021

#: ``KVM_CAP_STEAL_TIME`` (Linux commit 004a01241c5a; ref §2).
KVM_CAP_STEAL_TIME = 187

#: arm64 ``KVM_MAX_VCPUS`` is ``VGIC_V3_MAX_CPUS``: 512 in current kernels
#: (``include/kvm/arm_vgic.h``; older kernels had 255).
KVM_MAX_VCPUS = 512

#: arm64 stage-2 IPA sizes KVM accepts: 32 bits minimum (``KVM_VM_TYPE_ARM_IPA_SIZE``;
#: QEMU requests at least 32, docs/vmm-layouts.md §1), 52 bits at most (LPA2/LPA).
IPA_BITS_MIN = 32
IPA_BITS_MAX = 52
#: KVM's default when a VMM asks for no particular IPA size.
IPA_BITS_DEFAULT = 40


def pvtime_ipa(base: int, vcpu_id: int) -> int:
    """The IPA of vCPU ``vcpu_id``'s structure: ``base + 64 * id``.

    This is what QEMU (``hw/arm/virt.c``), kvmtool (``arm/aarch64/pvtime.c``),
    crosvm and Firecracker all do (docs/vmm-layouts.md §1-5).
    """
    return base + PVTIME_STRUCT_SIZE * vcpu_id


def initial_structure() -> bytes:
    """The 64 bytes KVM writes on the guest's ``PV_TIME_ST`` call.

    ``kvm_init_stolen_time()`` writes an all-zero ``struct pvclock_vcpu_stolen_time``:
    revision 0, attributes 0, stolen_time 0, padding (ref §2).  Little-endian.
    """
    import struct  # here: every command imports this module, few need the structure

    return struct.pack("<IIQ48x", PVTIME_REVISION, 0, 0)
