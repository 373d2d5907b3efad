"""The allocation rules, one by one (pure functions, no I/O)."""

from __future__ import annotations

import pytest

from pvdesc import kvm
from pvdesc.core.model import Describe
from pvdesc.core.ranges import Range
from pvdesc.description import profiles
from pvdesc.description.load import loads
from pvdesc.errors import LayoutError
from pvdesc.layout import allocate as layout
from pvdesc.layout import placement


def alloc(text: str) -> layout.Layout:
    return layout.allocate(loads(text.encode(), "t.yaml").description)


BASE = "name: t\nvcpus: 4\n"


@pytest.mark.parametrize(("max_vcpus", "size"), [(1, 0x10000), (512, 0x10000), (1025, 0x20000)])
def test_region_size_is_whole_granules(max_vcpus: int, size: int) -> None:
    """generic-kvm's rule; 1025 is beyond KVM's limit, but the rule still holds."""
    desc = loads(f"{BASE}memory: [{{base: 0x40000000, size: 1G}}]\n".encode(), "t.yaml").description
    assert profiles.region_size(desc._replace(max_vcpus=max_vcpus)) == size


def test_find_hole_sweeps_in_order() -> None:
    occ = [Range(0x0, 0x20000), Range(0x30000, 0x10000), Range(0x50000, 0x10000)]
    assert placement.find_hole(occ, 0x10000, 1 << 32) == 0x20000
    assert placement.find_hole(occ, 0x20000, 1 << 32) == 0x60000
    assert placement.find_hole(occ, 0x20000, 0x70000) is None
    assert placement.find_hole([], 0x10000, 1 << 32) == placement.HOLE_SEARCH_START


def test_hole_avoids_device_granules() -> None:
    lay = alloc(
        BASE + "memory:\n  - {base: 0x40000000, size: 1G}\ndevices:\n"
        "  - {name: a, base: 0x10000, size: 0x10}\n  - {name: b, base: 0x2fff0, size: 0x20}\n"
    )
    # a occupies granule 0x10000; b straddles granules 0x20000 and 0x30000.
    assert lay.region == Range(0x40000, 0x10000)
    assert lay.describe is Describe.NONE
    assert lay.dedicated_memslot and lay.region_memslot == 1
    assert [n.range for n in lay.memory_nodes] == [Range(0x40000000, 1 << 30)]


def test_carve_takes_top_of_highest_node0_bank() -> None:
    lay = alloc(
        BASE + "memory:\n  - {base: 0x40000000, size: 1G, numa_node: 0}\n"
        "  - {base: 0x100000000, size: 1G, numa_node: 1}\n"
        "  - {base: 0x80000000, size: 1G, numa_node: 0}\nstolen_time: {placement: carve}\n"
    )
    assert lay.region == Range(0xBFFF0000, 0x10000)
    assert lay.host_bank is not None and lay.host_bank.index == 2
    assert lay.describe is Describe.EXCLUDE
    assert lay.region_memslot == 2 and not lay.dedicated_memslot
    assert len(lay.memslots) == 3  # one memslot fewer than hole
    assert Range(0x80000000, (1 << 30) - 0x10000) in [n.range for n in lay.memory_nodes]


def test_reserved_memory_keeps_memory_node_whole() -> None:
    lay = alloc(
        BASE + "memory:\n  - {base: 0x40000000, size: 1G}\n"
        "stolen_time: {placement: carve, describe: reserved-memory}\n"
    )
    assert [n.range for n in lay.memory_nodes] == [Range(0x40000000, 1 << 30)]
    assert lay.reserved == (lay.region,)
    assert all(not r.overlaps(lay.region) for r in lay.usable_ram)


def test_fixed_inside_bank_splits_memory_node_in_two() -> None:
    lay = alloc(
        BASE + "memory:\n  - {base: 0x40000000, size: 1G}\n"
        "stolen_time: {placement: fixed, base: 0x50000000}\n"
    )
    assert lay.describe is Describe.EXCLUDE
    assert [n.range for n in lay.memory_nodes] == [
        Range(0x40000000, 0x10000000),
        Range(0x50010000, 0x2FFF0000),
    ]


def test_auto_is_acpi_for_uefi_acpi_boot() -> None:
    lay = alloc(
        BASE + "boot: uefi-acpi\nmemory:\n  - {base: 0x40000000, size: 1G}\n"
        "stolen_time: {placement: carve}\n"
    )
    assert lay.describe is Describe.ACPI
    assert all(not n.range.overlaps(lay.region) for n in lay.memory_nodes)


def test_vcpu_ipas_cover_every_possible_vcpu() -> None:
    lay = alloc("name: t\nvcpus: 2\nmax_vcpus: 512\nmemory:\n  - {base: 0x40000000, size: 1G}\n")
    ipas = lay.vcpu_ipas
    assert len(ipas) == 512
    assert ipas[0] == lay.region.base and ipas[511] == lay.region.base + 511 * 64
    assert ipas[511] + kvm.PVTIME_STRUCT_SIZE <= lay.region.end


def test_verify_catches_a_broken_layout() -> None:
    good = alloc(
        BASE + "memory:\n  - {base: 0x40000000, size: 1G}\nstolen_time: {placement: carve}\n"
    )
    bad = good._replace(
        describe=Describe.NONE,
        memory_nodes=layout.memory_nodes(good.description, good.region, Describe.NONE),
    )
    with pytest.raises(LayoutError, match="ipa-in-ram"):
        layout.verify(bad)


def test_verify_refuses_a_region_at_ipa_0() -> None:
    """The C header's lookup returns 0 for a vCPU out of range: 0 must never be an IPA."""
    good = alloc(BASE + "memory:\n  - {base: 0x40000000, size: 1G}\n")
    with pytest.raises(LayoutError, match="gives vCPU 0 the IPA 0"):
        layout.verify(good._replace(region=Range(0, good.region.size)))


def test_initial_structure_is_64_zero_bytes() -> None:
    assert kvm.initial_structure() == bytes(64)
    assert kvm.PV_TIME_ST == 0xC5000021 and kvm.PV_TIME_FEATURES == 0xC5000020
