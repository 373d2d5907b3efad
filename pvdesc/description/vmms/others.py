"""The profiles without a memory map: Cloud Hypervisor (unsupported) and pvdesc's own rules.

Cloud Hypervisor ae44c297 has no arm64 stolen time (``docs/vmm-layouts.md`` §4);
``generic-kvm`` lets pvdesc place the region itself.
"""

from __future__ import annotations

from pvdesc.core.model import Vmm
from pvdesc.description.vmm_profile import Profile

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
