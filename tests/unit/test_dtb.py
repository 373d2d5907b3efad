"""pvdesc.read.dtb: reading untrusted DTBs with libfdt (cells, ranges, memreserve, NOPs, limits)."""

from __future__ import annotations

import random
from pathlib import Path

import libfdt
import pytest
from helpers import cli_subprocess, dtc, memory, root

from pvdesc.core.ranges import Range
from pvdesc.errors import DTError
from pvdesc.read import dtb

NESTED = root(
    memory(0x40000000, 0x40000000)
    + """
    soc {
        compatible = "simple-bus";
        #address-cells = <1>; #size-cells = <1>;
        ranges = <0x0 0x0 0x10000000 0x01000000>;
        uart@2000 { reg = <0x2000 0x1000 0x3000 0x100>; };
        sub {
            compatible = "simple-bus";
            #address-cells = <1>; #size-cells = <1>;
            ranges;
            gpio@4000 { reg = <0x4000 0x100>; };
        };
        i2c@5000 {
            reg = <0x5000 0x100>;
            #address-cells = <1>; #size-cells = <0>;
            eeprom@50 { reg = <0x50>; };
        };
        nobus {
            #address-cells = <1>; #size-cells = <1>;
            dev@0 { reg = <0x0 0x10>; };
        };
    };
    defaults {
        ranges;
        dev@9000000 { reg = <0x0 0x09000000 0x1000>; };
    };
    """
)


def test_nested_buses_one_cell_addresses_translate(tmp_path: Path) -> None:
    tree = dtb.load(dtc(NESTED, tmp_path))
    devs = {d.source: d.range for d in tree.devices}
    # 1-cell child addresses under /soc, translated through its ranges window.
    assert devs["/soc/uart@2000 reg[0]"] == Range(0x10002000, 0x1000)
    assert devs["/soc/uart@2000 reg[1]"] == Range(0x10003000, 0x100)
    # An empty ranges is the identity, then /soc's window applies.
    assert devs["/soc/sub/gpio@4000 reg[0]"] == Range(0x10004000, 0x100)
    assert devs["/soc/i2c@5000 reg[0]"] == Range(0x10005000, 0x100)
    # A parent without #address-cells/#size-cells means 2/1 (DT spec §2.3.5).
    assert devs["/defaults/dev@9000000 reg[0]"] == Range(0x09000000, 0x1000)
    skipped = {s.path: s.reason for s in tree.skipped}
    assert "0" in skipped["/soc/i2c@5000/eeprom@50"]
    assert "no ranges" in skipped["/soc/nobus/dev@0"]
    assert [m.source for m in tree.memory] == ["/memory@40000000 reg[0]"]


def test_multiple_memory_reg_entries_and_memreserve(tmp_path: Path) -> None:
    text = "/memreserve/ 0x48000000 0x10000;\n" + root(
        'memory@40000000 { device_type = "memory"; '
        "reg = <0x0 0x40000000 0x0 0x10000000>, <0x1 0x0 0x0 0x20000000>; };"
    )
    tree = dtb.load(dtc(text, tmp_path))
    assert [(m.source, m.range) for m in tree.memory] == [
        ("/memory@40000000 reg[0]", Range(0x40000000, 0x10000000)),
        ("/memory@40000000 reg[1]", Range(0x100000000, 0x20000000)),
    ]
    assert [(m.source, m.range) for m in tree.memreserve] == [
        ("/memreserve/[0]", Range(0x48000000, 0x10000))
    ]


def test_reserved_memory_flags(tmp_path: Path) -> None:
    text = root(
        memory(0x40000000, 0x40000000)
        + """
        reserved-memory {
            #address-cells = <2>; #size-cells = <2>; ranges;
            a@50000000 { reg = <0x0 0x50000000 0x0 0x10000>; no-map; };
            b@50010000 { reg = <0x0 0x50010000 0x0 0x10000>; reusable; };
            dyn { size = <0x0 0x100000>; };
        };
        """
    )
    tree = dtb.load(dtc(text, tmp_path))
    assert tree.reserved_ignored is None
    got = [(r.source, r.range, r.no_map, r.reusable) for r in tree.reserved]
    assert got == [
        ("/reserved-memory/a@50000000 reg[0]", Range(0x50000000, 0x10000), True, False),
        ("/reserved-memory/b@50010000 reg[0]", Range(0x50010000, 0x10000), False, True),
    ]


def test_reserved_memory_with_wrong_cells_is_ignored(tmp_path: Path) -> None:
    text = root(
        """
        reserved-memory {
            #address-cells = <1>; #size-cells = <1>; ranges;
            a@50000000 { reg = <0x50000000 0x10000>; no-map; };
        };
        """
    )
    tree = dtb.load(dtc(text, tmp_path))
    assert tree.reserved_ignored is not None and "1/1" in tree.reserved_ignored


def test_nop_property_and_nop_node_are_skipped(tmp_path: Path) -> None:
    text = root(
        memory(0x40000000, 0x40000000)
        + memory(0x80000000, 0x40000000)
        + 'uart@9000000 { reg = <0x0 0x09000000 0x0 0x1000>; compatible = "x"; };'
    )
    buf = bytearray(dtc(text, tmp_path).read_bytes())
    fdt = libfdt.Fdt(buf)
    uart = fdt.path_offset("/uart@9000000")
    assert libfdt.fdt_nop_property(fdt._fdt, uart, "reg") == 0
    mem = fdt.path_offset("/memory@80000000")
    assert libfdt.fdt_nop_node(fdt._fdt, mem) == 0
    nopped = bytes(fdt._fdt)
    assert (4).to_bytes(4, "big") in nopped  # FDT_NOP tags really are there
    tree = dtb.parse(nopped, "nop.dtb")
    assert [m.source for m in tree.memory] == ["/memory@40000000 reg[0]"]
    assert tree.devices == ()


LEAVES = root(
    """
    bridge@10000000 {
        #address-cells = <1>; #size-cells = <1>;
        ranges = <0x0 0x0 0x10000000 0x100000>;
    };
    cpus {
        #address-cells = <1>; #size-cells = <0>;
        cpu@0 { reg = <0>; ranges = <0x1 0x2 0x3>; };
    };
    """
)


def test_a_leaf_is_checked_as_a_bus_is(tmp_path: Path) -> None:
    """A node without children still has its cells and ``ranges`` read and judged."""
    tree = dtb.load(dtc(LEAVES, tmp_path))
    # A leaf's window into a mapped parent is a window (a bridge whose children are absent).
    assert [(w.source, w.range) for w in tree.windows] == [
        ("/bridge@10000000 ranges[0]", Range(0x10000000, 0x100000))
    ]
    # Under /cpus (no ranges) a leaf's ranges is never decoded, as before.
    assert {s.path for s in tree.skipped} == {"/cpus/cpu@0"}
    bad_ranges = LEAVES.replace("0x10000000 0x100000>", "0x10000000>")
    with pytest.raises(DTError, match=r"/bridge@10000000: ranges is 12 bytes"):
        dtb.load(dtc(bad_ranges, tmp_path, "r"))
    bad_cells = LEAVES.replace("cpu@0 { reg = <0>;", "cpu@0 { reg = <0>; #size-cells = <0 0>;")
    with pytest.raises(DTError, match=r"/cpus/cpu@0: #size-cells is 8 bytes"):
        dtb.load(dtc(bad_cells, tmp_path, "c"))


def test_too_many_nodes_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtb, "MAX_NODES", 10)
    body = "".join(f"n{i} {{ }};" for i in range(20))
    with pytest.raises(DTError, match="more than 10 nodes"):
        dtb.load(dtc(root(body), tmp_path))


def test_too_deep_refused(tmp_path: Path) -> None:
    body = "".join("d {" for _ in range(dtb.MAX_DEPTH + 2)) + "};" * (dtb.MAX_DEPTH + 2)
    with pytest.raises(DTError, match="deeper than 64"):
        dtb.load(dtc(root(body), tmp_path))


@pytest.mark.parametrize(
    ("cells", "match"),
    [
        ("#address-cells = <5>; #size-cells = <2>;", "absurd"),
        ("#address-cells = <2>; #size-cells = <0xffffffff>;", "absurd"),
        ("#address-cells = <2 2>; #size-cells = <2>;", "one u32 cell"),
    ],
)
def test_absurd_cells_refused(tmp_path: Path, cells: str, match: str) -> None:
    with pytest.raises(DTError, match=match) as info:
        dtb.load(dtc(root("", cells), tmp_path))
    assert str(tmp_path) in str(info.value)


def test_reg_not_multiple_of_cells_refused(tmp_path: Path) -> None:
    text = root('memory@40000000 { device_type = "memory"; reg = <0x0 0x40000000 0x0>; };')
    with pytest.raises(DTError, match=r"/memory@40000000: reg is 12 bytes"):
        dtb.load(dtc(text, tmp_path))


def test_header_errors(tmp_path: Path) -> None:
    good = dtc(root(memory(0x40000000, 0x40000000)), tmp_path).read_bytes()
    with pytest.raises(DTError, match="truncated: 10 bytes"):
        dtb.parse(good[:10], "x.dtb")
    with pytest.raises(DTError, match="truncated: header totalsize"):
        dtb.parse(good[: len(good) // 2], "x.dtb")
    with pytest.raises(DTError, match="not a DTB: magic"):
        dtb.parse(b"\x7fELF" + good[4:], "x.dtb")
    with pytest.raises(DTError, match="limited to"):
        dtb.parse(b"\0" * (dtb.MAX_DTB_BYTES + 1), "x.dtb")


def test_random_byte_flips_never_crash(tmp_path: Path) -> None:
    good = dtc(NESTED, tmp_path).read_bytes()
    rng = random.Random(4)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            dtb.parse(bytes(data), "flip.dtb")
            outcomes["ok"] += 1
        except DTError as err:
            assert "\n" not in str(err) and str(err).startswith("flip.dtb: ")
            outcomes["error"] += 1
    assert outcomes["error"] > 0 and outcomes["ok"] > 0


def _wide_tree(nodes: int) -> bytes:
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property_u32("#address-cells", 2)
        sw.property_u32("#size-cells", 2)
        with sw.add_node("memory@40000000"):
            sw.property_string("device_type", "memory")
            sw.property("reg", (0x40000000).to_bytes(8, "big") + (1 << 30).to_bytes(8, "big"))
        with sw.add_node("bus"):
            sw.property_u32("#address-cells", 1)
            sw.property_u32("#size-cells", 1)
            sw.property("ranges", b"")
            for i in range(nodes - 3):
                with sw.add_node(f"d@{i:x}"):
                    sw.property("reg", (0x100000000 + 64 * i).to_bytes(8, "big")[4:] + b"\0\0\0@")
    fdt = sw.as_fdt()
    fdt.pack()
    return bytes(fdt.as_bytearray())


def test_cli_hostile_inputs_one_line_exit_2(tmp_path: Path) -> None:
    good = dtc(NESTED, tmp_path).read_bytes()
    cases = {
        "trunc.dtb": good[:100],
        "magic.dtb": b"\0\0\0\0" + good[4:],
        "flip.dtb": good[:60] + bytes([good[60] ^ 0xFF]) + good[61:],
        "cells.dtb": dtc(root("", "#address-cells = <99>;"), tmp_path, "c").read_bytes(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        res = cli_subprocess(
            "check", "--dtb", str(tmp_path / name), "--region", "0x90a0000:64K", "--vcpus", "4"
        )
        if res.returncode == 0:  # a flip that libfdt accepts must still give an answer
            assert "verdict: safe" in res.stdout
            continue
        assert res.returncode == 2, (name, res.stderr)
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
        assert res.stderr.startswith(f"pvdesc: error: {tmp_path / name}: ")


def test_cli_100k_node_tree_answers(tmp_path: Path) -> None:
    path = tmp_path / "big.dtb"
    path.write_bytes(_wide_tree(100_000))
    res = cli_subprocess("check", "--dtb", str(path), "--region", "0x90a0000:64K", "--vcpus", "8")
    assert res.returncode == 0, res.stderr
    assert "verdict: safe" in res.stdout
    inside = cli_subprocess(
        "check", "--dtb", str(path), "--region", "0x40000000:64K", "--vcpus", "8"
    )
    assert inside.returncode == 1
    assert "/memory@40000000 reg[0]" in inside.stdout
