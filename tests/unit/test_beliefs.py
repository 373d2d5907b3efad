"""pvdesc.layout.beliefs: what Linux and EDK2 believe, one test per construct that misled check.

Every devicetree is written here (DTS compiled with dtc, or built with libfdt's
FdtSw), and each test asserts the verdict and finding code in every boot mode
where the consumers disagree.  The property test compares pvdesc's usable RAM
with a deliberately simple re-implementation of Linux's rules written below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libfdt
import pytest
from helpers import dtc, memory, qemu_dump, root
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_patch import QEMU_BASE

from pvdesc.audit import check
from pvdesc.core.findings import Finding, Severity
from pvdesc.core.model import Boot, Describe, Target
from pvdesc.core.ranges import Range
from pvdesc.description.load import loads
from pvdesc.emit import devicetree as dt
from pvdesc.emit import patch
from pvdesc.errors import DTError, LayoutError
from pvdesc.layout import allocate as layout
from pvdesc.layout import beliefs, rules
from pvdesc.read import dtb

LINUX, UEFI_DT, UEFI_ACPI = Boot.LINUX_DT, Boot.UEFI_DT, Boot.UEFI_ACPI
RAM = memory(0x40000000, 0x40000000)  # 0x40000000-0x7fffffff


def tree(tmp: Path, body: str, cells: str = "#address-cells = <2>; #size-cells = <2>;") -> bytes:
    return dtc(root(body, cells), tmp).read_bytes()


def region(text: str, vcpus: int = 4) -> Target:
    return check.target_from_region(text, vcpus)


def errors(blob: bytes, target: Target, boot: Boot) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in check.check(dtb.parse(blob, "t.dtb"), target, boot):
        if f.severity is Severity.ERROR:
            out.setdefault(f.code, []).append(f)
    return out


def verdicts(blob: bytes, target: Target) -> dict[Boot, list[str]]:
    """The error codes per boot mode."""
    return {b: sorted(errors(blob, target, b)) for b in (LINUX, UEFI_DT, UEFI_ACPI)}


#: One 64 MiB bank away from every probe: at 2 TiB, or just below 4 GiB for 1-cell trees.
HIGH_RAM, LOW_RAM = Range(0x20000000000, 64 << 20), Range(0xFC000000, 64 << 20)


def fixed_layout(base: int, boot: Boot = LINUX, ram: Range = HIGH_RAM) -> layout.Layout:
    """generic-kvm, the region fixed at ``base`` outside RAM (one bank at ``ram``)."""
    text = (
        f"name: t\nvcpus: 4\nipa_bits: 44\nboot: {boot}\nmemory:\n"
        f"  - {{base: {ram.base:#x}, size: {ram.size:#x}}}\n"
        f"stolen_time: {{placement: fixed, base: {base:#x}}}\n"
    )
    return layout.allocate(loads(text.encode(), "t.yaml").description)


# --------------------------------------------------------------------------- false "safe"


def test_class1_usable_memory_replaces_reg(tmp_path: Path) -> None:
    """linux,usable-memory larger than reg: Linux reads it instead of reg."""
    body = """memory@40000000 { device_type = "memory";
        reg = <0x0 0x40000000 0x0 0x10000000>;
        linux,usable-memory = <0x0 0x40000000 0x0 0x40000000>; };"""
    blob = tree(tmp_path, body)
    got = verdicts(blob, region("0x60000000:64K"))
    assert got == {LINUX: ["ipa-in-ram"], UEFI_DT: [], UEFI_ACPI: []}
    (f,) = errors(blob, region("0x60000000:64K"), LINUX)["ipa-in-ram"]
    assert f.source == "/memory@40000000 linux,usable-memory[0]"


BUS = """bus@9000000 { compatible = "simple-bus"; #address-cells = <1>; #size-cells = <1>;
    ranges = <0x0 0x0 0x09000000 0x10000>;
    dev@8000 { reg = <0x8000 0x20000>; }; };"""


def test_class2_reg_straddling_a_window_still_exists(tmp_path: Path) -> None:
    """of_translate_address translates the start: the device ends beyond the window."""
    blob = tree(tmp_path, RAM + BUS)
    devs = {a.label: a.range for a in beliefs.believe(dtb.parse(blob), LINUX).devices}
    assert devs["/bus@9000000/dev@8000 reg[0]"] == Range(0x09008000, 0x20000)
    target = region("0x09010000:64K")
    for boot in (LINUX, UEFI_DT, UEFI_ACPI):
        (f,) = errors(blob, target, boot)["region-overlaps-device"]
        assert f.source == "/bus@9000000/dev@8000 reg[0]"
    with pytest.raises(DTError, match=r"/bus@9000000/dev@8000 reg\[0\] .* overlaps"):
        patch.patch_dtb(blob, fixed_layout(0x09010000))


PCIE = """pcie@10000000 { device_type = "pci"; compatible = "pci-host-ecam-generic";
    #address-cells = <3>; #size-cells = <2>;
    reg = <0x40 0x10000000 0x0 0x10000000>;
    ranges = <0x1000000 0x0 0x0 0x0 0x3eff0000 0x0 0x10000>,
             <0x2000000 0x0 0x10000000 0x0 0x10000000 0x0 0x2eff0000>; };"""


def test_class3_pci_host_bridge_window(tmp_path: Path) -> None:
    """Linux hands out BARs inside the bridge's MMIO window: check and --into both refuse."""
    blob = tree(tmp_path, RAM + PCIE)
    target = region("0x20000000:64K")
    for boot in (LINUX, UEFI_DT, UEFI_ACPI):
        (f,) = errors(blob, target, boot)["region-overlaps-device"]
        assert f.source == "/pcie@10000000 ranges[1]" and f.range == Range(0x10000000, 0x2EFF0000)
    with pytest.raises(DTError, match=r"/pcie@10000000 ranges\[1\]"):
        patch.patch_dtb(blob, fixed_layout(0x20000000))


def test_class4_wide_addresses_keep_the_low_64_bits(tmp_path: Path) -> None:
    """of_read_number keeps the low 64 bits of a 3-cell address."""
    cells = "#address-cells = <3>; #size-cells = <2>;"
    body = """memory@40000000 { device_type = "memory";
        reg = <0x1 0x0 0x40000000 0x0 0x40000000>; };"""
    blob = tree(tmp_path, body, cells)
    (node,) = dtb.parse(blob).memory_nodes
    assert [e.range for e in node.reg] == [Range(0x40000000, 0x40000000)]
    # EDK2 reads reg as u64 pairs: 20 bytes is not a multiple of 16, so it ignores the node.
    got = verdicts(blob, region("0x50000000:64K"))
    assert got == {LINUX: ["ipa-in-ram"], UEFI_DT: [], UEFI_ACPI: []}


# --------------------------------------------------------------------------- wrong "unsafe"


def test_class5_disabled_memory_node(tmp_path: Path) -> None:
    body = RAM + memory(0x100000000, 0x40000000).replace("};", 'status = "disabled"; };')
    got = verdicts(tree(tmp_path, body), region("0x100000000:64K"))
    assert got == {LINUX: [], UEFI_DT: [], UEFI_ACPI: []}


def test_class5_edk2_pei_ignores_status_of_the_lowest_node(tmp_path: Path) -> None:
    """QemuVirtMemInfoPeiLibConstructor takes the lowest 16-byte memory node, status unread."""
    body = RAM.replace("};", 'status = "disabled"; };') + memory(0x100000000, 0x40000000)
    got = verdicts(tree(tmp_path, body), region("0x50000000:64K"))
    assert got == {LINUX: [], UEFI_DT: ["ipa-in-ram"], UEFI_ACPI: ["ipa-in-ram"]}


@pytest.mark.parametrize(
    "usable", ["linux,usable-memory = <0x0 0x40000000 0x0 0x10000000>;", "linux,usable-memory;"]
)
def test_class6_usable_memory_shrinks_or_empties(tmp_path: Path, usable: str) -> None:
    blob = tree(tmp_path, RAM.replace("};", f"{usable} }};"))
    got = verdicts(blob, region("0x60000000:64K"))
    # EDK2 reads reg only: the region is RAM in the UEFI map.
    assert got == {LINUX: [], UEFI_DT: ["ipa-in-ram"], UEFI_ACPI: ["ipa-in-ram"]}


def test_class6_usable_memory_range_caps_and_adds(tmp_path: Path) -> None:
    chosen = """chosen { linux,usable-memory-range = <0x0 0x40000000 0x0 0x10000000>,
                                                    <0x0 0x90000000 0x0 0x10000>; };"""
    blob = tree(tmp_path, RAM + chosen)
    got = verdicts(blob, region("0x60000000:64K"))
    assert got == {LINUX: [], UEFI_DT: ["ipa-in-ram"], UEFI_ACPI: ["ipa-in-ram"]}
    # The second range is memblock_add'ed: RAM to Linux although no /memory says so.
    (f,) = errors(blob, region("0x90000000:64K"), LINUX)["ipa-in-ram"]
    assert f.source == "/chosen linux,usable-memory-range[1]"


NESTED = """soc { compatible = "simple-bus"; #address-cells = <2>; #size-cells = <2>; ranges;
    memory@80000000 { device_type = "memory"; reg = <0x0 0x80000000 0x0 0x10000000>; }; };"""


def test_class7_memory_below_the_root(tmp_path: Path) -> None:
    """Linux scans the root's children only; EDK2 scans every depth."""
    blob = tree(tmp_path, RAM + NESTED)
    got = verdicts(blob, region("0x80000000:64K"))
    assert got == {LINUX: [], UEFI_DT: ["ipa-in-ram"], UEFI_ACPI: ["ipa-in-ram"]}
    patch.patch_dtb(blob, fixed_layout(0x80000000))  # linux-dt: accepted
    with pytest.raises(DTError, match="not under the root"):
        patch.patch_dtb(blob, fixed_layout(0x80000000, UEFI_DT))


RESERVED_AT_0 = """reserved-memory@0 { #address-cells = <2>; #size-cells = <2>; ranges;
    pv@50000000 { reg = <0x0 0x50000000 0x0 0x10000>; no-map; }; };"""


def test_class8_reserved_memory_with_unit_address(tmp_path: Path) -> None:
    blob = tree(tmp_path, RAM + RESERVED_AT_0)
    got = verdicts(blob, region("0x50000000:64K"))
    assert got == {LINUX: [], UEFI_DT: ["no-map-under-uefi"], UEFI_ACPI: ["no-map-under-uefi"]}


def test_class9_adjacent_no_map_children(tmp_path: Path) -> None:
    """vCPU 1's structure 0x50000040-0x5000007f straddles the two children."""
    body = (
        RAM
        + """reserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;
        a@50000000 { reg = <0x0 0x50000000 0x0 0x60>; no-map; };
        b@50000060 { reg = <0x0 0x50000060 0x0 0xffa0>; no-map; }; };"""
    )
    got = verdicts(tree(tmp_path, body), region("0x50000000:64K"))
    assert got == {LINUX: [], UEFI_DT: ["no-map-under-uefi"], UEFI_ACPI: ["no-map-under-uefi"]}


def test_class10_device_type_string_list(tmp_path: Path) -> None:
    """strcmp (Linux) and AsciiStrCmp (EDK2) compare the first string only."""
    body = RAM.replace('device_type = "memory"', 'device_type = "memory", "extra"') + (
        """reserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;
        pv@50000000 { reg = <0x0 0x50000000 0x0 0x10000>; no-map; }; };"""
    )
    blob = tree(tmp_path, body)
    got = verdicts(blob, region("0x50000000:64K"))
    assert got == {LINUX: [], UEFI_DT: ["no-map-under-uefi"], UEFI_ACPI: ["no-map-under-uefi"]}
    assert verdicts(blob, region("0x60000000:64K"))[LINUX] == ["ipa-in-ram"]


@pytest.mark.parametrize(
    ("pre", "earlier"),
    [
        ("/memreserve/ 0x5000f000 0x1000;\n", ""),
        ("", "fb@5000f000 { reg = <0x0 0x5000f000 0x0 0x1000>; };"),
    ],
    ids=["memreserve", "earlier-mapped-child"],
)
def test_refused_no_map_stays_ram(tmp_path: Path, pre: str, earlier: str) -> None:
    """early_init_dt_reserve_memory: -EBUSY for a no-map range already reserved."""
    body = RAM + (
        "reserved-memory { #address-cells = <2>; #size-cells = <2>; ranges; "
        + earlier
        + "pv@50000000 { reg = <0x0 0x50000000 0x0 0x10000>; no-map; }; };"
    )
    blob = dtc(pre + root(body), tmp_path).read_bytes()
    (f,) = errors(blob, region("0x50000000:64K"), LINUX)["ipa-in-ram"]
    assert "-EBUSY" in f.message and "/reserved-memory/pv@50000000" in f.message


# --------------------------------------------------------------------------- red team

NO_MAP_AT_7FFF = """reserved-memory {{ #address-cells = <2>; #size-cells = <2>; ranges;
    st@7fff0000 {{ reg = <0x0 0x7fff0000 0x0 0x10000>; no-map; {extra} }}; }};"""


def test_initrd_outside_memory_becomes_ram(tmp_path: Path) -> None:
    """arm64_memblock_init memblock_add's the initrd (freed after boot), memory node or not."""
    chosen = (
        "chosen { linux,initrd-start = <0x0 0x80000000>; linux,initrd-end = <0x0 0x80010000>; };"
    )
    blob = tree(tmp_path, RAM + chosen)
    got = verdicts(blob, region("0x80000000:64K"))
    # uefi-acpi: EDK2 installs no DT, the stub builds its own /chosen.
    assert got == {LINUX: ["ipa-in-ram"], UEFI_DT: ["ipa-in-ram"], UEFI_ACPI: []}
    (f,) = errors(blob, region("0x80000000:64K"), LINUX)["ipa-in-ram"]
    assert f.source == "/chosen linux,initrd-start"
    # Below the start of DRAM the kernel WARNs and drops the initrd: nothing is added.
    low = "chosen { linux,initrd-start = <0x0 0x090a0000>; linux,initrd-end = <0x0 0x090b0000>; };"
    assert verdicts(tree(tmp_path, RAM + low), region("0x090a0000:64K"))[LINUX] == []


def test_initrd_refuses_an_overlapping_no_map_child(tmp_path: Path) -> None:
    """The initrd is memblock_reserve'd before the reserved-memory scan: -EBUSY."""
    chosen = (
        "chosen { linux,initrd-start = <0x0 0x7ffe0000>; linux,initrd-end = <0x0 0x7fff1000>; };"
    )
    blob = tree(tmp_path, RAM + chosen + NO_MAP_AT_7FFF.format(extra=""))
    (f,) = errors(blob, region("0x7fff0000:64K"), LINUX)["ipa-in-ram"]
    assert "-EBUSY" in f.message and "/reserved-memory/st@7fff0000" in f.message
    # An initrd elsewhere in RAM leaves the child alone.
    away = "chosen { linux,initrd-start = <0x0 0x48000000>; linux,initrd-end = <0x0 0x49000000>; };"
    blob = tree(tmp_path, RAM + away + NO_MAP_AT_7FFF.format(extra=""))
    assert verdicts(blob, region("0x7fff0000:64K"))[LINUX] == []


@pytest.mark.parametrize(
    "extra",
    ['compatible = "restricted-dma-pool";', 'compatible = "shared-dma-pool"; linux,dma-default;'],
    ids=["init-fails-nomap-cleared", "dma-pool-hands-it-out"],
)
def test_no_map_child_with_a_compatible_is_not_a_hole(tmp_path: Path, extra: str) -> None:
    """fdt_init_reserved_mem_node: a driver claims it (a failing init clears nomap)."""
    blob = tree(tmp_path, RAM + NO_MAP_AT_7FFF.format(extra=extra))
    got = verdicts(blob, region("0x7fff0000:64K"))
    assert got == {
        LINUX: ["ipa-in-mapped-reservation"],
        UEFI_DT: ["ipa-in-ram"],
        UEFI_ACPI: ["ipa-in-ram"],
    }


@pytest.mark.parametrize(
    "node",
    [
        "device_type = [6d 65 6d 6f 72 79]; reg = <0x0 0x80000000 0x0 0x10000000>;",
        'device_type = "memory"; status = [6f 6b 61 79]; reg = <0x0 0x80000000 0x0 0x10000000>;',
    ],
    ids=["device_type", "status"],
)
def test_strings_without_nul_are_compared_whole(tmp_path: Path, node: str) -> None:
    """strcmp reads on into the zero padding or the next tag: "memory" and "okay" match."""
    blob = tree(tmp_path, RAM + f"memory@80000000 {{ {node} }};")
    (f,) = errors(blob, region("0x80000000:64K"), LINUX)["ipa-in-ram"]
    assert f.source == "/memory@80000000 reg[0]"


def test_memory_is_trimmed_to_whole_pages(tmp_path: Path) -> None:
    """early_init_dt_add_memory_arch: base rounded up, size down (4 KiB trims least)."""
    body = """memory@40000000 { device_type = "memory";
        reg = <0x0 0x40000000 0x0 0x3fff0040>, <0x0 0x8000ffc0 0x0 0x40>; };"""
    blob = tree(tmp_path, body)
    got = verdicts(blob, region("0x7fff0000:64K"))
    # Linux: RAM ends at 0x7fff0000, the 64-byte tail and the sub-page entry are dropped.
    # EDK2 reads reg as it is: the tail is RAM in the UEFI map.
    assert got == {LINUX: [], UEFI_DT: ["ipa-in-ram"], UEFI_ACPI: ["ipa-in-ram"]}
    assert verdicts(blob, region("0x80000000:64K"))[LINUX] == []


@pytest.mark.parametrize("device_type", ["device_type;", "device_type = [6d 65 6d];"])
def test_edk2_pei_matches_device_type_by_its_length(tmp_path: Path, device_type: str) -> None:
    """AsciiStrnCmp (Type, "memory", Len): an empty value or a NUL-less prefix matches."""
    # Below a bus without ranges: no device either, so only EDK2's PEI scan sees it.
    body = RAM + (
        "cfg { #address-cells = <2>; #size-cells = <2>; "
        f"low@10000000 {{ {device_type} reg = <0x0 0x10000000 0x0 0x10000000>; }}; }};"
    )
    blob = tree(tmp_path, body)
    got = verdicts(blob, region("0x18000000:64K"))
    assert got == {LINUX: [], UEFI_DT: ["ipa-in-ram"], UEFI_ACPI: ["ipa-in-ram"]}
    assert dtb.pei_type_matches(b"memory\0") and not dtb.pei_type_matches(b"mem\0")
    assert not dtb.pei_type_matches(b"\0") and not dtb.pei_type_matches(b"memoryx\0")


def test_root_without_address_cells_is_refused(tmp_path: Path) -> None:
    """#address-cells = <0>: Linux reads each /memory entry as RAM at 0 (of_read_number)."""
    body = 'memory { device_type = "memory"; reg = <0x0 0x80000000>; };'
    blob = tree(tmp_path, body, "#address-cells = <0>; #size-cells = <2>;")
    with pytest.raises(DTError, match="#address-cells = <0>: Linux would read"):
        dtb.parse(blob, "t.dtb")


def test_usable_memory_range_second_range_under_uefi_dt(tmp_path: Path) -> None:
    """efi_init calls early_init_dt_check_for_usable_mem_range: the second range is added."""
    chosen = """chosen { linux,usable-memory-range = <0x0 0x40000000 0x0 0x40000000>,
                                                    <0x0 0x80000000 0x0 0x100000>; };"""
    got = verdicts(tree(tmp_path, RAM + chosen), region("0x80000000:64K"))
    assert got == {LINUX: ["ipa-in-ram"], UEFI_DT: ["ipa-in-ram"], UEFI_ACPI: []}


@pytest.mark.parametrize(
    ("body", "text", "want"),
    [
        # fdt_scan_reserved_mem skips an unavailable child: the range stays RAM.
        (NO_MAP_AT_7FFF.format(extra='status = "disabled";'), "0x7fff0000:64K", ["ipa-in-ram"]),
        # __reserved_mem_check_root: cells differ from the root's, or no ranges.
        (
            """reserved-memory { #address-cells = <1>; #size-cells = <1>; ranges;
            st@7fff0000 { reg = <0x7fff0000 0x10000>; no-map; }; };""",
            "0x7fff0000:64K",
            ["ipa-in-ram"],
        ),
        (
            NO_MAP_AT_7FFF.format(extra="").replace("ranges;", ""),
            "0x7fff0000:64K",
            ["ipa-in-ram"],
        ),
        # reusable: the OS may allocate it.
        (NO_MAP_AT_7FFF.format(extra="reusable;"), "0x7fff0000:64K", ["ipa-in-mapped-reservation"]),
        # A dynamic reservation (size, alloc-ranges) has no fixed place: not a hole.
        (
            """reserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;
            dyn { size = <0x0 0x10000>; alloc-ranges = <0x0 0x7fff0000 0x0 0x10000>; no-map; };
            };""",
            "0x7fff0000:64K",
            ["ipa-in-ram"],
        ),
        # mem= caps RAM (memblock_mem_limit_remove_map), but CONFIG_CMDLINE_FORCE or a
        # boot loader may replace bootargs: pvdesc does not rely on it.
        ('chosen { bootargs = "mem=512M"; };', "0x7fff0000:64K", ["ipa-in-ram"]),
        # A node named memory without device_type is no memory node (a device).
        ("memory { reg = <0x0 0x80000000 0x0 0x10000000>; };", "0x80000000:64K", []),
        # of_fdt_device_is_available: "ok" is available, "fail" is not.
        (
            'memory@80000000 { device_type = "memory"; status = "ok"; '
            "reg = <0x0 0x80000000 0x0 0x10000000>; };",
            "0x80000000:64K",
            ["ipa-in-ram"],
        ),
        (
            'memory@80000000 { device_type = "memory"; status = "fail"; '
            "reg = <0x0 0x80000000 0x0 0x10000000>; };",
            "0x80000000:64K",
            [],
        ),
        # Zero-size entries are skipped; the region starts exactly where RAM ends.
        (
            'memory@c0000000 { device_type = "memory"; reg = <0x0 0x80000000 0x0 0x0 '
            "0x0 0xc0000000 0x0 0x10000000>; };",
            "0x80000000:64K",
            [],
        ),
        # fdt_scan_reserved_mem never reads the parent's status: the child is honoured.
        (
            NO_MAP_AT_7FFF.format(extra="").replace("ranges;", 'ranges; status = "disabled";'),
            "0x7fff0000:64K",
            [],
        ),
        # fdt_path_offset finds the first /reserved-memory: Linux ignores it, not the second.
        (
            """reserved-memory { #address-cells = <1>; #size-cells = <1>; ranges; };
            reserved-memory@1 { #address-cells = <2>; #size-cells = <2>; ranges;
            st@7fff0000 { reg = <0x0 0x7fff0000 0x0 0x10000>; no-map; }; };""",
            "0x7fff0000:64K",
            ["ipa-in-ram"],
        ),
    ],
    ids=[
        "disabled-child",
        "reserved-cells",
        "reserved-no-ranges",
        "reusable",
        "dynamic",
        "mem=",
        "named-memory",
        "status-ok",
        "status-fail",
        "zero-size-and-boundary",
        "disabled-parent",
        "second-reserved-memory",
    ],
)
def test_linux_dt_cases_pvdesc_already_judged(
    tmp_path: Path, body: str, text: str, want: list[str]
) -> None:
    """The red team's cases on which pvdesc already agreed with Linux (or stays cautious)."""
    got = sorted(
        c for c in errors(tree(tmp_path, RAM + body), region(text), LINUX) if c.startswith("ipa-")
    )
    assert got == want


# --------------------------------------------------------------------------- one rule set


def test_check_ipas_judges_reported_ipas(tmp_path: Path) -> None:
    blob = tree(tmp_path, RAM)
    dt = dtb.parse(blob)
    found = check.check_ipas(dt, [(0, 0x50000000), (1, 0x090A0040)])
    assert {f.code for f in found if f.severity is Severity.ERROR} == {"ipa-in-ram"}
    assert check.verdict(check.check_ipas(dt, [(0, 0x090A0000), (1, 0x090A0040)])) == "safe"


@pytest.mark.parametrize("boot", [LINUX, UEFI_DT])
def test_verify_and_check_give_the_same_codes(boot: Boot) -> None:
    """layout.verify judges the layout with check's rules: the same codes as check on its DTB."""
    text = (
        f"name: t\nvcpus: 4\nboot: {boot}\nmemory:\n  - {{base: 0x40000000, size: 1G}}\n"
        "stolen_time: {placement: carve}\n"
    )
    good = layout.allocate(loads(text.encode(), "t.yaml").description)
    bad = good._replace(
        describe=Describe.NONE,
        memory_nodes=layout.memory_nodes(good.description, good.region, Describe.NONE),
    )
    for lay, codes in ((good, set()), (bad, {"ipa-in-ram"})):
        judged = rules.judge(layout.belief(lay), layout.target(lay))
        on_dtb = check.check(dtb.parse(dt.render(lay).dtb), layout.target(lay), boot)
        for found in (judged, on_dtb):
            assert {f.code for f in found if f.severity is Severity.ERROR} == codes
    with pytest.raises(LayoutError, match="ipa-in-ram"):
        layout.verify(bad)


DEVICE_CODES = {"region-overlaps-device", "granule-shared-with-device"}


@pytest.fixture(scope="module")
def qemu_base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """QEMU virt's own tree (the base test_patch patches)."""
    path = tmp_path_factory.mktemp("qemu") / "base.dtb"
    qemu_dump([*QEMU_BASE, "-machine", f"virt,gic-version=3,dumpdtb={path}"], path)
    return path.read_bytes()


def _bases(tmp: Path, qemu: bytes) -> dict[str, bytes]:
    """Every base tree of the suite: QEMU's, the fuzz corpus's ``into-`` cases, this file's."""
    corpus = Path(__file__).parent.parent / "data" / "fuzz"
    out = {"qemu virt": qemu}
    out |= {p.name: p.read_bytes() for p in sorted(corpus.glob("into-*.dtb"))}
    bodies = {
        "bus": RAM + BUS,
        "pcie": RAM + PCIE,
        "nested": RAM + NESTED,
        "reserved@0": RAM + RESERVED_AT_0,
        "usable": RAM.replace("};", "linux,usable-memory = <0x0 0x40000000 0x0 0x8000000>; };"),
    }
    for i, (name, body) in enumerate(bodies.items()):
        out[name] = dtc(root(body), tmp, f"b{i}").read_bytes()
    return out


def _probes(tree: dtb.DeviceTree) -> set[int]:
    out = {0x090A0000, 0x20000000, 0x80000000}
    for r in (*(d.range for d in tree.devices), *(w.range for w in tree.windows)):
        out |= {r.base - r.base % 0x10000, r.end - r.end % 0x10000}
    for m in tree.memory:
        out.add(m.range.base - m.range.base % 0x10000)
    return {b for b in out if 0 < b < 1 << 40}


def _replaced(blob: bytes, ram: Range) -> bytes:
    """The base with its root memory nodes replaced by one for ``ram`` (what --into writes)."""
    fdt = libfdt.Fdt(blob)
    fdt.resize(len(blob) + 4096)
    quiet = (libfdt.NOTFOUND,)
    node = fdt.first_subnode(0, quiet)
    while node >= 0:
        kind = fdt.getprop(node, "device_type", quiet)
        if isinstance(kind, libfdt.Property) and bytes(kind).split(b"\0")[0] == b"memory":
            fdt.del_node(node)
            node = fdt.first_subnode(0, quiet)
        else:
            node = fdt.next_subnode(node, quiet)
    ac = fdt.getprop(0, "#address-cells").as_uint32()
    sc = fdt.getprop(0, "#size-cells", quiet)
    sc = sc.as_uint32() if isinstance(sc, libfdt.Property) else 1
    new = fdt.add_subnode(0, "memory@ram")
    fdt.setprop(new, "reg", ram.base.to_bytes(4 * ac, "big") + ram.size.to_bytes(4 * sc, "big"))
    fdt.setprop_str(new, "device_type", "memory")
    fdt.pack()
    return bytes(fdt.as_bytearray())


@pytest.mark.parametrize("boot", [LINUX, UEFI_DT])
def test_into_and_check_agree_on_every_base(tmp_path: Path, boot: Boot, qemu_base: bytes) -> None:
    """``--into`` refuses a base exactly when ``check`` finds what patching cannot remove."""
    compared = 0
    for name, blob in _bases(tmp_path, qemu_base).items():
        try:
            base = dtb.parse(blob, name)
        except DTError:
            continue  # a corrupt corpus base: both refuse it before any rule
        ram = LOW_RAM if base.root_cells[0] == 1 else HIGH_RAM
        for probe in sorted(_probes(base)):
            if ram.granules().overlaps(Range(probe, 0x10000)):
                continue
            lay = fixed_layout(probe, boot, ram)
            replaced = dtb.parse(_replaced(blob, ram), name)
            found = check.check(replaced, layout.target(lay), boot)
            # check's errors, and its 64 KiB warnings (pvdesc's own policy refuses those).
            expect = any(f.severity is not Severity.INFO for f in found)
            try:
                out = patch.patch_dtb(blob, lay)
            except DTError as err:
                assert expect, f"{name} at {probe:#x}: --into refused, check did not: {err}"
            else:
                assert not expect, f"{name} at {probe:#x}: check refused, --into did not"
                after = check.check(dtb.parse(out), layout.target(lay), boot)
                assert check.verdict(after) == "safe", (name, hex(probe))
            compared += 1
    assert compared > 50


# --------------------------------------------------------------------------- property

PAGE = 0x10000
BASE = 0x40000000
PAGES = 16


def _pages(start: int, count: int) -> set[int]:
    return set(range(start, start + count))


def _reg(start: int, count: int) -> bytes:
    """One (2-cell address, 2-cell size) entry for ``count`` 64 KiB pages from page ``start``."""
    return (BASE + start * PAGE).to_bytes(8, "big") + (count * PAGE).to_bytes(8, "big")


span = st.tuples(st.integers(0, PAGES - 1), st.integers(0, 8))
memory_node = st.fixed_dictionaries(
    {
        "reg": st.lists(span, min_size=1, max_size=3),
        "usable": st.none() | st.lists(span, max_size=2),
        "status": st.sampled_from([None, "okay", "ok", "disabled", "fail"]),
        "type": st.sampled_from(["memory", "memory\0extra", "memoryx", "cpu"]),
        "nul": st.booleans(),
        "nested": st.booleans(),
    }
)
# no-map together with reusable is outside the binding (reserved-memory.yaml): pvdesc
# treats it as mapped, the cautious side, so the property only draws one flag at a time.
child = st.fixed_dictionaries(
    {
        "reg": span,
        "flag": st.sampled_from([None, "no-map", "reusable"]),
        "status": st.sampled_from([None, "okay", "disabled"]),
        "compatible": st.sampled_from([False, False, True]),
    }
)
shape = st.fixed_dictionaries(
    {
        "memory": st.lists(memory_node, min_size=1, max_size=4),
        "reserved_name": st.sampled_from(
            [None, "reserved-memory", "reserved-memory@0", "reserved-memory@0", "reserved-memory"]
        ),
        "reserved_ranges": st.sampled_from([True, True, True, False]),
        "children": st.lists(child, max_size=6),
        "memreserve": st.lists(span, max_size=2),
        "chosen": st.none() | st.lists(span, min_size=1, max_size=2),
        "initrd": st.none() | span,
    }
)


def _build(s: dict[str, Any]) -> bytes:
    sw = libfdt.FdtSw(1 << 16)  # add_reservemap_entry does not grow the buffer
    for start, count in s["memreserve"]:
        sw.add_reservemap_entry(BASE + start * PAGE, count * PAGE)
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property_u32("#address-cells", 2)
        sw.property_u32("#size-cells", 2)
        nested = []
        for i, m in enumerate(s["memory"]):
            if m["nested"]:
                nested.append((i, m))
                continue
            _memory_node(sw, i, m)
        if nested:
            with sw.add_node("bus"):
                sw.property_u32("#address-cells", 2)
                sw.property_u32("#size-cells", 2)
                sw.property("ranges", b"")
                for i, m in nested:
                    _memory_node(sw, i, m)
        if s["chosen"] is not None or s["initrd"] is not None:
            with sw.add_node("chosen"):
                if s["chosen"] is not None:
                    ranges = b"".join(_reg(*r) for r in s["chosen"])
                    sw.property("linux,usable-memory-range", ranges)
                if s["initrd"] is not None:
                    start, count = s["initrd"]
                    sw.property_u64("linux,initrd-start", BASE + start * PAGE)
                    sw.property_u64("linux,initrd-end", BASE + (start + count) * PAGE)
        if s["reserved_name"] is not None:
            with sw.add_node(s["reserved_name"]):
                sw.property_u32("#address-cells", 2)
                sw.property_u32("#size-cells", 2)
                if s["reserved_ranges"]:
                    sw.property("ranges", b"")
                for j, c in enumerate(s["children"]):
                    with sw.add_node(f"r{j}"):
                        sw.property("reg", _reg(*c["reg"]))
                        if c["flag"] is not None:
                            sw.property(c["flag"], b"")
                        if c["status"] is not None:
                            sw.property_string("status", c["status"])
                        if c["compatible"]:
                            sw.property_string("compatible", "restricted-dma-pool")
    fdt = sw.as_fdt()
    fdt.pack()
    return bytes(fdt.as_bytearray())


def _memory_node(sw: libfdt.FdtSw, i: int, m: dict[str, Any]) -> None:
    with sw.add_node(f"memory@{i}"):
        # Without its NUL the value is still a C string: zero padding or the next tag follows.
        sw.property("device_type", m["type"].encode() + (b"\0" if m["nul"] else b""))
        sw.property("reg", b"".join(_reg(*r) for r in m["reg"]))
        if m["usable"] is not None:
            sw.property("linux,usable-memory", b"".join(_reg(*r) for r in m["usable"]))
        if m["status"] is not None:
            sw.property_string("status", m["status"])


def linux_usable_pages(s: dict[str, Any]) -> set[int]:
    """Linux's rules, read from drivers/of/fdt.c, over 64 KiB page numbers (no shared code)."""
    ram: set[int] = set()
    for m in s["memory"]:
        is_memory = m["type"].split("\0")[0] == "memory"
        if m["nested"] or not is_memory or m["status"] not in (None, "okay", "ok"):
            continue
        for start, count in m["usable"] if m["usable"] is not None else m["reg"]:
            ram |= _pages(start, count)
    if s["chosen"] is not None:
        (start, count), *rest = s["chosen"]
        if count:
            ram &= _pages(start, count)
        for start, count in rest:
            ram |= _pages(start, count)
    reserved: set[int] = set()
    if s["initrd"] is not None and s["initrd"][1] and ram and s["initrd"][0] >= min(ram):
        # arm64_memblock_init: memblock_add + memblock_reserve, freed after boot.
        ram |= _pages(*s["initrd"])
        reserved |= _pages(*s["initrd"])
    if s["reserved_name"] is None or not s["reserved_ranges"]:
        return ram
    for start, count in s["memreserve"]:
        if count == 0:  # early_init_fdt_scan_reserved_mem: ``if (!size) break;``
            break
        reserved |= _pages(start, count)
    nomap: set[int] = set()
    for c in s["children"]:
        if c["status"] == "disabled":
            continue
        pages = _pages(*c["reg"])
        if c["flag"] == "no-map":
            if pages & ram and pages & reserved:
                continue  # -EBUSY: nothing done
            if not c["compatible"]:  # restricted-dma-pool's init fails: nomap cleared
                nomap |= pages
        else:
            reserved |= pages
    return ram - nomap


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape)
@example(  # a zero-size /memreserve/ entry ends the list for libfdt and Linux alike
    {
        "memory": [
            {
                "reg": [(0, 1)],
                "usable": None,
                "status": None,
                "type": "memory",
                "nul": True,
                "nested": False,
            }
        ],
        "reserved_name": "reserved-memory",
        "reserved_ranges": True,
        "children": [{"reg": (0, 1), "flag": "no-map", "status": None, "compatible": False}],
        "memreserve": [(0, 0), (0, 1)],
        "chosen": None,
        "initrd": None,
    }
)
def test_usable_ram_equals_linux_rules(s: dict[str, Any]) -> None:
    got: set[int] = set()
    for r in beliefs.believe(dtb.parse(_build(s)), LINUX).usable_ram:
        assert (r.base - BASE) % PAGE == 0 and r.size % PAGE == 0
        got |= _pages((r.base - BASE) // PAGE, r.size // PAGE)
    assert got == linux_usable_pages(s)
