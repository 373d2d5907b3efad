"""Properties over random valid descriptions (hypothesis).

For every layout pvdesc accepts: each vCPU IPA is 64-byte aligned, inside a
memslot, outside every range the emitted DTB tells the guest is usable RAM
(read back with libfdt: /memory minus /reserved-memory no-map), and its 64 KiB
granule shares nothing with RAM the guest may use or with any device.
"""

from __future__ import annotations

import libfdt
from helpers import decode_reg, libfdt_check, walk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvdesc import kvm
from pvdesc.core.model import (
    Boot,
    Describe,
    Device,
    Placement,
    RamBank,
    StolenTimeSpec,
    VmDescription,
    Vmm,
    check_consistent,
)
from pvdesc.core.ranges import Range
from pvdesc.emit import devicetree as dt
from pvdesc.layout import allocate as layout

G = kvm.GRANULE


@st.composite
def descriptions(draw: st.DrawFn) -> VmDescription:
    """Banks and devices laid out left to right with random gaps, below 2^36."""
    n_items = draw(st.integers(1, 8))
    kinds = draw(st.lists(st.sampled_from(["ram", "dev"]), min_size=n_items, max_size=n_items))
    if "ram" not in kinds:
        kinds[0] = "ram"
    cursor = draw(st.integers(0, 64)) * G
    banks: list[RamBank] = []
    devices: list[Device] = []
    numa = draw(st.booleans())
    for kind in kinds:
        if kind == "ram":
            cursor = -(-cursor // G) * G  # RAM banks are 64 KiB aligned
            size = draw(st.integers(2, 4096)) * G
            node = draw(st.integers(0, 3)) if numa else None
            banks.append(RamBank(Range(cursor, size), node, len(banks)))
        else:
            offset = draw(st.integers(0, G - 1))  # devices need not be granule aligned
            size = draw(st.integers(1, 4 * G))
            devices.append(Device(f"d{len(devices)}", Range(cursor + offset, size), len(devices)))
            size += offset
        cursor += size + draw(st.sampled_from([0, 0, G, 3 * G, 1 << 30]))
    if numa and not any(b.numa_node == 0 for b in banks):
        banks[0] = RamBank(banks[0].range, 0, 0)
    boot = draw(st.sampled_from(list(Boot)))
    placement = draw(st.sampled_from([Placement.HOLE, Placement.CARVE]))
    if placement is Placement.HOLE:
        describe = draw(st.sampled_from([Describe.AUTO, Describe.NONE]))
    elif boot is Boot.LINUX_DT:
        describe = draw(
            st.sampled_from([Describe.AUTO, Describe.EXCLUDE, Describe.RESERVED_MEMORY])
        )
    else:
        describe = draw(st.sampled_from([Describe.AUTO, Describe.EXCLUDE]))
    max_vcpus = draw(st.integers(1, kvm.KVM_MAX_VCPUS))
    desc = VmDescription(
        name="prop",
        vcpus=draw(st.integers(1, max_vcpus)),
        max_vcpus=max_vcpus,
        ipa_bits=40,
        boot=boot,
        vmm=Vmm.GENERIC_KVM,
        memory=tuple(banks),
        devices=tuple(devices),
        stolen_time=StolenTimeSpec(placement, None, describe),
    )
    check_consistent(desc)
    return desc


def usable_ram_from_dtb(blob: bytes) -> list[Range]:
    fdt = libfdt_check(blob)
    ram: list[Range] = []
    nomap: list[Range] = []
    for path, off in walk(fdt):
        if path.startswith("/memory@"):
            ram += [Range(b, s) for b, s in decode_reg(fdt, off)]
        elif (
            path.startswith("/reserved-memory/")
            and fdt.getprop(off, "no-map", (libfdt.NOTFOUND,)) != -libfdt.NOTFOUND
        ):
            nomap += [Range(b, s) for b, s in decode_reg(fdt, off)]
    for hole in nomap:
        ram = [p for r in ram for p in r.minus(hole)]
    return ram


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(descriptions())
def test_every_ipa_is_safe(desc: VmDescription) -> None:
    lay = layout.allocate(desc)
    usable = usable_ram_from_dtb(dt.render(lay).dtb)
    slots = [s.range for s in lay.memslots]
    for ipa in lay.vcpu_ipas:
        struct = Range(ipa, kvm.PVTIME_STRUCT_SIZE)
        assert ipa % 64 == 0
        assert any(s.contains(struct) for s in slots)
        assert not any(r.overlaps(struct) for r in usable)
        granule = struct.granules()
        assert not any(r.overlaps(granule) for r in usable)
        assert not any(d.range.overlaps(granule) for d in desc.devices)
    assert lay.region.size % G == 0 and lay.region.base % G == 0
    if desc.boot is not Boot.LINUX_DT:
        assert lay.reserved == ()  # EDK2 ignores /reserved-memory
