"""pvdesc.audit.check: one test per finding code, on DTBs made in the test with dtc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli_subprocess, dtc, memory, root

from pvdesc.audit import check
from pvdesc.core.findings import Finding, Severity
from pvdesc.core.model import Boot, Target
from pvdesc.core.ranges import Range, sweep_overlaps
from pvdesc.emit import hypervisor
from pvdesc.read import dtb

RAM = memory(0x40000000, 0x40000000)  # 0x40000000-0x7fffffff


def tree(tmp: Path, body: str, pre: str = "") -> dtb.DeviceTree:
    return dtb.load(dtc(pre + root(body), tmp))


def region(text: str, vcpus: int = 4, ipa_bits: int = 40) -> Target:
    return check.target_from_region(text, vcpus, ipa_bits)


def codes(findings: tuple[Finding, ...]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.code, []).append(f)
    return out


def config(
    base: int, size: int, slots: list[tuple[int, int, str]], ipas: list[int], bits: int = 40
) -> Target:
    doc = {
        "format": "pvdesc.hypervisor/1",
        "ipa_bits": bits,
        "memslots": [
            {"slot": i, "guest_phys_addr": b, "memory_size": s, "purpose": p}
            for i, (b, s, p) in enumerate(slots)
        ],
        "stolen_time": {"base": base, "size": size},
        "vcpus": [{"id": i, "pvtime_ipa": a} for i, a in enumerate(ipas)],
    }
    return hypervisor.target_from_config(json.dumps(doc).encode(), "x.hypervisor.json")


def test_outside_ram_is_safe(tmp_path: Path) -> None:
    found = check.check(tree(tmp_path, RAM), region("0x090a0000:64K"))
    assert check.verdict(found) == "safe"
    assert [f.code for f in found] == ["memslots-not-checked"]
    assert found[0].severity is Severity.INFO


def test_ipa_in_ram(tmp_path: Path) -> None:
    found = check.check(tree(tmp_path, RAM), region("0x50000000:64K", vcpus=8))
    (f,) = codes(found)["ipa-in-ram"]
    assert f.severity is Severity.ERROR
    assert f.source == "/memory@40000000 reg[0]"
    assert f.range == Range(0x50000000, 8 * 64)
    assert "vCPUs 0-7" in f.message and "move the region" in f.message
    assert check.verdict(found) == "unsafe"


def test_ipa_in_ram_second_reg_entry_of_nested_bus_memory(tmp_path: Path) -> None:
    body = """
    bus {
        compatible = "simple-bus";
        #address-cells = <1>; #size-cells = <1>;
        ranges = <0x0 0x0 0x80000000 0x40000000>;
        memory@0 { device_type = "memory"; reg = <0x0 0x1000000 0x2000000 0x1000000>; };
    };
    """
    dt = tree(tmp_path, body)
    # Linux's early_init_dt_scan_memory reads only the root's children: not RAM.
    assert "ipa-in-ram" not in codes(check.check(dt, region("0x82000000:64K")))
    # EDK2's FindNextMemoryNodeReg scans every depth and reads reg as two u64s, ignoring
    # the bus's 1/1 cells and ranges: base 0x1000000, size 0x200000001000000.
    found = check.check(dt, region("0x82000000:64K"), Boot.UEFI_DT)
    (f,) = codes(found)["ipa-in-ram"]
    assert f.source == "/bus/memory@0 reg[0]"


@pytest.mark.parametrize("flag", ["", "reusable;"])
def test_ipa_in_mapped_reservation(tmp_path: Path, flag: str) -> None:
    body = (
        RAM
        + f"""
    reserved-memory {{
        #address-cells = <2>; #size-cells = <2>; ranges;
        pv@50000000 {{ reg = <0x0 0x50000000 0x0 0x10000>; {flag} }};
    }};"""
    )
    found = check.check(tree(tmp_path, body), region("0x50000000:64K"))
    (f,) = codes(found)["ipa-in-mapped-reservation"]
    assert f.source == "/reserved-memory/pv@50000000 reg[0]"
    assert "no-map" in f.message
    assert "ipa-in-ram" not in codes(found)


def test_ipa_in_memreserve(tmp_path: Path) -> None:
    found = check.check(
        tree(tmp_path, RAM, pre="/memreserve/ 0x50000000 0x10000;\n"), region("0x50000000:64K")
    )
    (f,) = codes(found)["ipa-in-memreserve"]
    assert f.source == "/memreserve/[0]" and f.severity is Severity.ERROR


NO_MAP = (
    RAM
    + """
    reserved-memory {
        #address-cells = <2>; #size-cells = <2>; ranges;
        stolen-time@50000000 { reg = <0x0 0x50000000 0x0 0x10000>; no-map; };
    };"""
)


def test_no_map_is_safe_for_linux_dt(tmp_path: Path) -> None:
    found = check.check(tree(tmp_path, NO_MAP), region("0x50000000:64K"), Boot.LINUX_DT)
    assert check.verdict(found) == "safe"
    assert "granule-shared-with-ram" not in codes(found)


@pytest.mark.parametrize("boot", [Boot.UEFI_DT, Boot.UEFI_ACPI])
def test_no_map_under_uefi(tmp_path: Path, boot: Boot) -> None:
    found = check.check(tree(tmp_path, NO_MAP), region("0x50000000:64K"), boot)
    (f,) = codes(found)["no-map-under-uefi"]
    assert f.severity is Severity.ERROR
    assert f.source == "/reserved-memory/stolen-time@50000000 reg[0]"
    assert "EDK2" in f.message


def test_no_map_under_ignored_reserved_memory_node_is_ram(tmp_path: Path) -> None:
    body = NO_MAP.replace("ranges;", "")
    found = check.check(tree(tmp_path, body), region("0x50000000:64K"))
    (f,) = codes(found)["ipa-in-ram"]
    assert "ignored by Linux" in f.message


def test_ipa_misaligned_and_structure_crosses_page(tmp_path: Path) -> None:
    target = config(
        0x090A0000,
        0x10000,
        [(0x40000000, 0x40000000, "ram"), (0x090A0000, 0x10000, "stolen-time")],
        [0x090A0000, 0x090A0FE0, 0x090A1010],
    )
    found = codes(check.check(tree(tmp_path, RAM), target))
    assert {f.message.split(":")[0] for f in found["ipa-misaligned"]} == {"vCPUs 1-2"}
    (cross,) = found["structure-crosses-page"]
    assert cross.message.startswith("vCPU 1:") and cross.range == Range(0x090A0FE0, 64)
    assert cross.source == "x.hypervisor.json"


def test_ipa_beyond_ipa_space(tmp_path: Path) -> None:
    found = codes(check.check(tree(tmp_path, RAM), region("0xffff0000:64K", 2, ipa_bits=32)))
    assert "ipa-beyond-ipa-space" not in found
    found = codes(check.check(tree(tmp_path, RAM), region("0x100000000:64K", 2, ipa_bits=32)))
    (f,) = found["ipa-beyond-ipa-space"]
    assert "32-bit" in f.message


def test_ipa_not_in_memslot_and_dedicated_memslot(tmp_path: Path) -> None:
    ram_slot = (0x40000000, 0x40000000, "ram")
    good = config(
        0x090A0000, 0x10000, [ram_slot, (0x090A0000, 0x10000, "stolen-time")], [0x090A0000]
    )
    found = codes(check.check(tree(tmp_path, RAM), good))
    assert "ipa-not-in-memslot" not in found
    (info,) = found["dedicated-memslot"]
    assert info.severity is Severity.INFO and "lru_slot" in info.message
    assert info.source == "x.hypervisor.json memslots[slot 1]"
    bad = config(0x090A0000, 0x10000, [ram_slot], [0x090A0000, 0x090A0040])
    (f,) = codes(check.check(tree(tmp_path, RAM), bad))["ipa-not-in-memslot"]
    assert f.severity is Severity.ERROR and f.message.startswith("vCPUs 0-1:")


def test_structure_past_the_end_of_its_memslot_is_in_no_memslot(tmp_path: Path) -> None:
    """A structure must lie wholly inside one memslot: its last byte counts too."""
    ram_slot = (0x40000000, 0x40000000, "ram")
    ipas = [0x090A0000, 0x090A0040]
    for size, flagged in ((0x80, False), (0x7F, True), (0x41, True), (0x40, True)):
        target = config(0x090A0000, 0x10000, [ram_slot, (0x090A0000, size, "stolen-time")], ipas)
        found = codes(check.check(tree(tmp_path, RAM), target))
        assert ("ipa-not-in-memslot" in found) is flagged, hex(size)
        if flagged:
            (f,) = found["ipa-not-in-memslot"]
            assert f.message.startswith("vCPU 1:"), f.message


def test_region_in_ram_memslot(tmp_path: Path) -> None:
    target = config(0x50000000, 0x10000, [(0x40000000, 0x40000000, "ram")], [0x50000000])
    found = codes(check.check(tree(tmp_path, NO_MAP), target))
    (f,) = found["region-in-ram-memslot"]
    assert f.severity is Severity.INFO and f.range == Range(0x40000000, 0x40000000)


def test_ipa_outside_region(tmp_path: Path) -> None:
    found = codes(check.check(tree(tmp_path, RAM), region("0x090a0000:128", vcpus=4)))
    (f,) = found["ipa-outside-region"]
    assert f.message.startswith("vCPUs 2-3:")


DEVICES = (
    RAM
    + """
    soc {
        compatible = "simple-bus";
        #address-cells = <1>; #size-cells = <1>;
        ranges = <0x0 0x0 0x09000000 0x20000>, <0xa8000 0x0 0x090a8000 0x1000>;
        uart@0 { reg = <0x0 0x1000>; };
        rtc@a8000 { reg = <0x10000 0x100 0xa8000 0x1000>; };
    };"""
)


def test_region_overlaps_device_through_ranges(tmp_path: Path) -> None:
    found = codes(check.check(tree(tmp_path, DEVICES), region("0x09000000:64K")))
    # The device's reg and the bus window it sits in (check and --into judge both).
    got = {(f.source, f.range) for f in found["region-overlaps-device"]}
    assert got == {
        ("/soc/uart@0 reg[0]", Range(0x09000000, 0x1000)),
        ("/soc ranges[0]", Range(0x09000000, 0x20000)),
    }


def test_granule_shared_with_device(tmp_path: Path) -> None:
    found = codes(check.check(tree(tmp_path, DEVICES), region("0x090a0000:4K", vcpus=4)))
    assert "region-overlaps-device" not in found
    assert {f.severity for f in found["granule-shared-with-device"]} == {Severity.WARNING}
    got = {(f.source, f.range) for f in found["granule-shared-with-device"]}
    assert got == {
        ("/soc/rtc@a8000 reg[1]", Range(0x090A8000, 0x1000)),
        ("/soc ranges[1]", Range(0x090A8000, 0x1000)),
    }


def test_granule_shared_with_ram(tmp_path: Path) -> None:
    body = memory(0x40000000, 0x3FFF8000)  # ends at 0x7fff8000, mid-granule
    found = codes(check.check(tree(tmp_path, body), region("0x7fff8000:32K")))
    assert "ipa-in-ram" not in found
    (f,) = found["granule-shared-with-ram"]
    assert f.severity is Severity.WARNING and f.source == "/memory@40000000 reg[0]"


def test_json_and_text_output_and_exit_codes(tmp_path: Path) -> None:
    path = dtc(root(RAM), tmp_path)
    res = cli_subprocess(
        "check",
        "--dtb",
        str(path),
        "--region",
        "0x50000000:64K",
        "--vcpus",
        "2",
        "--format",
        "json",
    )
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["format"] == "pvdesc.check/1" and doc["verdict"] == "unsafe"
    first = doc["findings"][0]
    assert set(first) == {"severity", "code", "message", "range", "source"}
    assert first == {
        "severity": "error",
        "code": "ipa-in-ram",
        "message": first["message"],
        "range": [0x50000000, 0x50000000 + 128],
        "source": "/memory@40000000 reg[0]",
    }
    ok = cli_subprocess("check", "--dtb", str(path), "--region", "0x090a0000:64K", "--vcpus", "2")
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "verdict: safe"
    for bad in (
        ["--region", "nonsense", "--vcpus", "2"],
        ["--region", "0x0:64K"],
        ["--region", "0:64K", "--vcpus", "9999"],
    ):
        res = cli_subprocess("check", "--dtb", str(path), *bad)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert "Traceback" not in res.stderr


def test_cli_hypervisor_config_errors_are_one_line(tmp_path: Path) -> None:
    path = dtc(root(RAM), tmp_path)
    cfg = tmp_path / "x.hypervisor.json"
    for text in ("{", '{"format": "nope"}', '{"format": "pvdesc.hypervisor/1", "ipa_bits": 40}'):
        cfg.write_text(text)
        res = cli_subprocess("check", "--dtb", str(path), "--hypervisor-config", str(cfg))
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert str(cfg) in res.stderr


def test_sweep_overlaps_matches_brute_force() -> None:
    import random

    rng = random.Random(7)
    qs = [Range(rng.randrange(10_000), rng.randrange(0, 300)) for _ in range(300)]
    rs = [Range(rng.randrange(10_000), rng.randrange(0, 300)) for _ in range(300)]
    got = sorted(sweep_overlaps(qs, rs))
    want = sorted(
        (i, j)
        for i, q in enumerate(qs)
        for j, r in enumerate(rs)
        if q.size and r.size and q.overlaps(r)
    )
    assert got == want


@pytest.mark.parametrize(("vcpus", "slots"), [(513, 1), (1, (1 << 15) + 1)])
def test_too_many_vcpus_or_memslots_states_the_limits(vcpus: int, slots: int) -> None:
    base = 0x09000000
    with pytest.raises(hypervisor.ConfigError) as info:
        config(base, 0x10000, [(base, 0x10000, "stolen-time")] * slots, [base] * vcpus)
    assert str(info.value) == (
        f"x.hypervisor.json: too many vcpus or memslots ({vcpus} vcpus, {slots} memslots): "
        "hypervisor configs are limited to 512 vcpus (KVM_MAX_VCPUS) and 32768 memslots"
    )
