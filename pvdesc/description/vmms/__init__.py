"""Every VMM's memory map as data, one module per VMM, each cited to the upstream file and version.

QEMU's ``base_memmap[]`` style: one table per VMM that every consumer (allocation,
DT and ACPI output, ``pvdesc profiles``) reads.  :data:`PROFILES` holds each VMM's
newest map, :data:`OLDER` the older maps a description can ask for with
``vmm_version``.
"""

from __future__ import annotations

from pvdesc.core.model import Vmm
from pvdesc.description.vmm_profile import Profile
from pvdesc.description.vmms.crosvm import CROSVM, CROSVM_2022
from pvdesc.description.vmms.firecracker import FIRECRACKER
from pvdesc.description.vmms.kvmtool import KVMTOOL
from pvdesc.description.vmms.others import CLOUD_HYPERVISOR, GENERIC_KVM
from pvdesc.description.vmms.qemu_virt import QEMU_VIRT

PROFILES: dict[Vmm, Profile] = {
    p.vmm: p for p in (QEMU_VIRT, KVMTOOL, CROSVM, FIRECRACKER, CLOUD_HYPERVISOR, GENERIC_KVM)
}


#: Older memory maps a description can still ask for with ``vmm_version``, newest first.
OLDER: dict[Vmm, tuple[Profile, ...]] = {Vmm.CROSVM: (CROSVM_2022,)}
