"""The hypervisor half of the pair: memslots and per-vCPU stolen-time IPAs.

Shape (``pvdesc.hypervisor/1``; integers, never strings)::

    {"format": "pvdesc.hypervisor/1", "vm": NAME, "vmm": VMM, "ipa_bits": N,
     "memslots": [{"slot": 0, "guest_phys_addr": A, "memory_size": S,
                   "purpose": "ram" | "stolen-time"}, ...],
     "stolen_time": {"base": A, "size": S, "stride": 64, "revision": 0, "memslot": K},
     "vcpus": [{"id": 0, "pvtime_ipa": A}, ...]}

A VMM creates each memslot with ``KVM_SET_USER_MEMORY_REGION`` and, for every
vCPU, sets ``KVM_ARM_VCPU_PVTIME_CTRL``/``KVM_ARM_VCPU_PVTIME_IPA`` to
``pvtime_ipa`` with ``KVM_SET_DEVICE_ATTR`` on the vCPU fd (vcpu.rst §3).
"""

from __future__ import annotations

import json
from typing import Any

from pvdesc import kvm
from pvdesc.layout.allocate import Layout

FORMAT = "pvdesc.hypervisor/1"


def config(layout: Layout) -> dict[str, Any]:
    """The hypervisor config as plain data."""
    desc = layout.description
    return {
        "format": FORMAT,
        "vm": desc.name,
        "vmm": str(desc.vmm),
        "ipa_bits": desc.ipa_bits,
        "memslots": [
            {
                "slot": s.slot,
                "guest_phys_addr": s.range.base,
                "memory_size": s.range.size,
                "purpose": str(s.purpose),
            }
            for s in layout.memslots
        ],
        "stolen_time": {
            "base": layout.region.base,
            "size": layout.region.size,
            "stride": kvm.PVTIME_STRUCT_SIZE,
            "revision": kvm.PVTIME_REVISION,
            "memslot": layout.region_memslot,
        },
        "vcpus": [{"id": i, "pvtime_ipa": ipa} for i, ipa in enumerate(layout.vcpu_ipas)],
    }


def dumps(layout: Layout) -> str:
    """The config as JSON text (stable key order, trailing newline)."""
    return json.dumps(config(layout), indent=2) + "\n"
