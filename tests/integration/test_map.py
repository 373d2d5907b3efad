"""pvdesc map: the address-map model, the scale, terminal snapshots, SVG structure, bad input."""

from __future__ import annotations

import itertools
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import ROOT, cli_subprocess, run
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdesc.commands.map import command, draw, rows, sources, terminal
from pvdesc.commands.map.model import AddressMap, Describer, MapSource, SegmentKind
from pvdesc.commands.map.scale import Scaling, scale
from pvdesc.core import units
from pvdesc.core.findings import Severity
from pvdesc.core.model import Describe, Memslot, Purpose
from pvdesc.core.ranges import Labelled, Range
from pvdesc.description.load import load
from pvdesc.layout import allocate as layout
from pvdesc.tools import proc

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SNAPSHOTS = ROOT / "tests" / "data" / "map"
SVG_NS = "{http://www.w3.org/2000/svg}"


def amap_of(name: str) -> AddressMap:
    return command.from_description(ROOT / "examples" / f"{name}.yaml")


def plain_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    return env


# ---------------------------------------------------------------------------- model


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_segments_tile_the_space(example: Path) -> None:
    amap = command.from_description(example)
    segs = amap.segments
    assert segs[0].range.base == 0
    assert segs[-1].range.end == amap.source.limit
    for a, b in itertools.pairwise(segs):
        assert a.range.end == b.range.base
    desc = load(example).description
    regions = [s for s in segs if s.kind is SegmentKind.REGION]
    assert [r.range for r in regions] == [amap.source.region]
    labels = {s.label for s in segs}
    assert {f"memory[{b.index}]" for b in desc.memory} <= labels
    assert {d.name for d in desc.devices} <= labels


def test_describers_follow_describe_mode() -> None:
    by_name = {
        n: next(s for s in amap_of(n).segments if s.kind is SegmentKind.REGION)
        for n in ("linux-carve-reserved", "uefi-carve-exclude", "qemu-virt-8cpu")
    }
    assert by_name["linux-carve-reserved"].described == (
        Describer.MEMORY_NODE,
        Describer.RESERVED_NO_MAP,
    )
    assert by_name["uefi-carve-exclude"].described == (Describer.EXCLUDED,)
    assert by_name["qemu-virt-8cpu"].described == ()
    assert by_name["qemu-virt-8cpu"].memslot == 1


def test_acpi_claim_and_numa_nodes(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "numa-2node.yaml").read_text()
    path = tmp_path / "acpi.yaml"
    path.write_text(text.replace("boot: uefi-dt", "boot: uefi-acpi"))
    amap = command.from_description(path)
    region = next(s for s in amap.segments if s.kind is SegmentKind.REGION)
    assert region.described == (Describer.EXCLUDED, Describer.ACPI_CLAIM)
    nodes = {s.label: s.numa_node for s in amap.segments if s.kind is SegmentKind.RAM}
    assert nodes == {"memory[0]": 0, "memory[1]": 1}


def test_memslot_boundary_splits_rows() -> None:
    src = sources.layout_source(
        layout.allocate(load(ROOT / "examples/generic-hole.yaml").description)
    )
    # Pretend RAM were two memslots: the rows must split where the second begins.
    half = Range(0x80000000, 2 << 30)
    rest = Range(half.end, 2 << 30)
    split = src._replace(memslots=(Memslot(0, half, Purpose.RAM), Memslot(1, rest, Purpose.RAM)))
    ram_rows = [s for s in rows.build(split).segments if s.kind is SegmentKind.RAM]
    assert [(r.range, r.memslot) for r in ram_rows] == [(half, 0), (rest, 1)]


def test_rows_name_the_smallest_containing_range() -> None:
    # A device inside a bus window (as a DTB's simple-bus ranges give): its row is the device's,
    # either side is the window's; a memslot listed first wins where two overlap.
    bus, uart = Range(0x08000000, 0x02000000), Range(0x09000000, 0x1000)
    region = Range(0x40000000, 0x10000)
    src = MapSource(
        title="nested",
        facts=(),
        ram=(),
        devices=(Labelled(bus, "bus"), Labelled(uart, "uart")),
        memory_nodes=(),
        reserved=(),
        acpi_claims=(),
        memslots=(Memslot(7, bus, Purpose.RAM), Memslot(3, Range(0, 1 << 32), Purpose.RAM)),
        region=region,
        structures=1,
        limit=1 << 32,
    )
    named = [(s.range, s.label, s.memslot) for s in rows.build(src).segments]
    assert named[1:4] == [
        (Range(bus.base, uart.base - bus.base), "bus", 7),
        (uart, "uart", 7),
        (Range(uart.end, bus.end - uart.end), "bus", 7),
    ]
    assert named[0] == (Range(0, bus.base), "", 3)


def test_region_detail_elides_the_middle() -> None:
    detail = rows.region_detail(Range(0x10000, 0x10000), 64)
    names = [terminal.structure_text(s) for s in detail]
    assert names == [
        "vCPU 0", "vCPU 1", "vCPU 2", "... 58 more", "vCPU 61", "vCPU 62", "vCPU 63", "unused",
    ]  # fmt: skip
    assert detail[4].range == Range(0x10000 + 61 * 64, 64)
    assert detail[-1].range == Range(0x10000 + 64 * 64, 0x10000 - 64 * 64)
    small = rows.region_detail(Range(0x10000, 0x10000), 4)
    assert [s.vcpu for s in small] == [0, 1, 2, 3, None]


def test_scale_is_linear_when_it_can_be() -> None:
    ext = scale([100, 200, 300], 600, 10)
    assert [e.scaling for e in ext] == [Scaling.TO_SCALE] * 3
    assert [round(e.length, 3) for e in ext] == [100, 200, 300]
    assert [round(e.offset, 3) for e in ext] == [0, 100, 300]


def test_scale_compresses_and_enlarges_but_keeps_order() -> None:
    sizes = [4096, 1 << 30, 1 << 40, 64 << 10]
    ext = scale(sizes, 400, 20, gaps=[False, False, True, False])
    assert ext[0].scaling is Scaling.ENLARGED and ext[0].length == 20
    assert ext[2].scaling is Scaling.COMPRESSED
    assert ext[1].length >= ext[3].length >= 20
    assert abs(sum(e.length for e in ext) - 400) < 1e-6
    crowded = scale([1, 2, 3], 10, 20)
    assert [e.length for e in crowded] == [20, 20, 20]


def test_size_text() -> None:
    assert units.size_text(64 << 10) == "64 KiB"
    assert units.size_text(24) == "24 B"
    assert units.size_text(1536 << 20) == "1536 MiB"
    assert units.size_text(0xFFE8) == "64 KiB - 24 B"
    assert units.size_text((2 << 30) - (64 << 10)) == "2 GiB - 64 KiB"
    assert units.size_text((8 << 30) - (64 << 10)) == "8 GiB - 64 KiB"
    assert units.size_text(0xF60000) == "15 MiB + 384 KiB"
    assert units.size_text(0xFE00) == "64 KiB - 512 B"  # a tie: from above
    assert units.size_text(0x1FFFEFFF1) == "0x1fffefff1 B"


_UNIT = {"B": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}


def _parse_size(text: str) -> int:
    """The number a size_text names: ``N U``, ``N U +/- M V`` or ``0x... B``."""
    if text.startswith("0x"):
        number, unit = text.split(" ")
        assert unit == "B"
        return int(number, 16)
    words = text.split(" ")
    value = int(words[0]) << _UNIT[words[1]]
    if len(words) == 2:
        return value
    assert len(words) == 5 and words[2] in "+-"
    rest = int(words[3]) << _UNIT[words[4]]
    assert 0 < rest < 1 << _UNIT[words[1]]  # the rest is smaller than the unit
    return value + rest if words[2] == "+" else value - rest


@given(st.integers(min_value=1, max_value=(1 << 64) - 1))
@settings(max_examples=2000, deadline=None)
def test_size_text_is_exact(size: int) -> None:
    assert _parse_size(units.size_text(size)) == size


@pytest.mark.parametrize("shift", [10, 20, 30, 40])
def test_size_text_near_units_is_exact(shift: int) -> None:
    for n in (1, 3, 1000):
        for delta in (-(1 << 16), -4096, -64, -1, 1, 64, 4096, 1 << 16):
            size = (n << shift) + delta
            if size > 0:
                assert _parse_size(units.size_text(size)) == size, size


def test_color_decision() -> None:
    auto = command.ColorMode.AUTO
    assert command.use_color(auto, True, {}) is True
    assert command.use_color(auto, False, {}) is False
    assert command.use_color(auto, True, {"NO_COLOR": "1"}) is False
    assert command.use_color(auto, True, {"NO_COLOR": ""}) is True
    assert command.use_color(command.ColorMode.ALWAYS, False, {"NO_COLOR": "1"}) is True
    assert command.use_color(command.ColorMode.NEVER, True, {}) is False


# ---------------------------------------------------------------------------- terminal


@pytest.mark.parametrize("name", ["qemu-virt-8cpu", "numa-2node", "linux-carve-reserved"])
def test_text_snapshot(name: str) -> None:
    res = cli_subprocess("map", f"examples/{name}.yaml", env=plain_env())
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "\x1b[" not in res.stdout
    assert res.stdout == (SNAPSHOTS / f"{name}.txt").read_text()


def test_color_when_forced() -> None:
    res = cli_subprocess("map", "examples/qemu-virt-8cpu.yaml", "--color=always", env=plain_env())
    assert res.returncode == 0, res.stderr
    assert "\x1b[1;30;43m" in res.stdout  # the region
    assert "\x1b[32m" in res.stdout  # RAM
    stripped = res.stdout
    for code in ("\x1b[1m", "\x1b[32m", "\x1b[34m", "\x1b[1;30;43m", "\x1b[2m", "\x1b[0m"):
        stripped = stripped.replace(code, "")
    assert stripped == (SNAPSHOTS / "qemu-virt-8cpu.txt").read_text()


def test_findings_are_shown_inline() -> None:
    lay = layout.allocate(load(ROOT / "examples/uefi-carve-exclude.yaml").description)
    # A broken layout: the /memory node is not cut around the region (as if describe none).
    broken = lay._replace(
        memory_nodes=layout.memory_nodes(lay.description, lay.region, Describe.NONE)
    )
    amap = rows.build(sources.layout_source(broken))
    assert len(amap.findings) == 1 and "ipa-in-ram" in amap.findings[0].message
    finding = amap.findings[0]
    assert (finding.severity, finding.code, finding.range) == (
        Severity.ERROR,
        sources.LAYOUT_UNSAFE,
        lay.region,
    )
    region = next(s for s in amap.segments if s.kind is SegmentKind.REGION)
    assert region.flagged and region.described == (Describer.MEMORY_NODE,)
    text = terminal.render_text(amap)
    assert "findings (1):" in text and "! " + amap.findings[0].message in text
    assert any(line.startswith("! ") and "STOLEN-TIME" in line for line in text.splitlines())


# ---------------------------------------------------------------------------- SVG


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_svg_is_wellformed_with_labelled_elements(example: Path, tmp_path: Path) -> None:
    svg = tmp_path / "out" / "map.svg"
    res = cli_subprocess("map", str(example), "--svg", str(svg), env=plain_env())
    assert res.returncode == 0, res.stderr
    root = ET.parse(svg).getroot()
    assert root.tag == f"{SVG_NS}svg"
    groups = root.iter(f"{SVG_NS}g")
    segs = [g for g in groups if "seg" in g.get("class", "").split()]
    desc = load(example).description
    labels = {g.get("data-label") for g in segs}
    assert {f"memory[{b.index}]" for b in desc.memory} <= labels
    assert {d.name for d in desc.devices} <= labels
    region = root.find(f".//{SVG_NS}g[@id='region']")
    assert region is not None and region.get("data-kind") == "region"
    amap = command.from_description(example)
    assert region.get("data-base") == hex(amap.source.region.base)
    legend = root.find(f".//{SVG_NS}g[@id='legend']")
    assert legend is not None
    keys = {g.get("data-key") for g in legend.iter(f"{SVG_NS}g")}
    assert {"device", "region", "gap", "break"} <= keys
    compressed_gaps = [
        g for g in segs if g.get("data-kind") == "gap" and g.get("data-scaling") == "compressed"
    ]
    assert compressed_gaps, "every example has a large gap that must be compressed"
    for g in compressed_gaps:
        assert g.find(f"{SVG_NS}g[@class='break']") is not None
    for g in segs:
        if g.get("data-scaling") != "compressed":
            assert g.find(f"{SVG_NS}g[@class='break']") is None
    vcpus = {g.get("id") for g in root.iter(f"{SVG_NS}g") if g.get("id", "").startswith("vcpu-")}
    assert f"vcpu-{desc.max_vcpus - 1}" in vcpus and "vcpu-0" in vcpus
    granules = root.find(f".//{SVG_NS}g[@id='granules']")
    assert granules is not None
    drawn = [(g.get("data-label"), g.get("data-occupants")) for g in granules]
    expected = [(label or "...", occ) for label, _, occ in terminal.granules_around(amap)]
    assert [d for d in drawn if d[0] is not None] == expected
    assert any(label.startswith("region 1 of") for label, _ in expected)


def test_svg_escapes_labels() -> None:
    amap = amap_of("qemu-virt-8cpu")
    src = amap.source
    evil = src._replace(
        title="<a&b>", devices=(Labelled(Range(0, 0x1000), "</text><script>x</script>"),)
    )
    text = draw.render_svg(rows.build(evil))
    root = ET.fromstring(text.encode())
    assert root.find(f".//{SVG_NS}script") is None
    assert "&lt;a&amp;b&gt;" in text
    labels = {g.get("data-label") for g in root.iter(f"{SVG_NS}g")}
    assert "</text><script>x</script>" in labels


# ---------------------------------------------------------------------------- bad input


def test_no_input_is_one_line_exit_2() -> None:
    res = cli_subprocess("map")
    assert res.returncode == 2
    assert res.stderr == (
        "pvdesc: error: map needs a VM description (YAML) or --dtb FILE --region BASE:SIZE\n"
    )
    assert res.stdout == ""


def test_bad_description_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = ROOT / "tests" / "data" / "bad" / "carve-none.yaml"
    svg = tmp_path / "map.svg"
    res = cli_subprocess("map", str(bad.relative_to(ROOT)), "--svg", str(svg))
    assert res.returncode == 2
    assert res.stderr == (bad.with_suffix(".expected")).read_text()
    assert res.stdout == "" and not svg.exists()


def test_unwritable_svg_is_one_line_exit_2_and_nothing_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    html = tmp_path / "map.html"
    res = cli_subprocess(
        "map", "examples/generic-hole.yaml", "--html", str(html), "--svg", str(blocker / "m.svg")
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"pvdesc: error: {blocker}: ")
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert blocker.read_text() == "x"
    assert not html.exists(), "the HTML was written although the SVG could not be"


# ---------------------------------------------------------------------------- --dtb


def test_dtb_mode_draws_the_dtb_and_check_findings(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        cli_subprocess("build", "examples/linux-carve-reserved.yaml", "-o", str(out)).returncode
        == 0
    )
    dtb = out / "linux-carve-reserved.dtb"
    svg = tmp_path / "d.svg"
    res = cli_subprocess(
        "map", "--dtb", str(dtb), "--region", "0xbfff0000:64K", "--vcpus", "8",
        "--svg", str(svg), env=plain_env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    region_row = next(line for line in res.stdout.splitlines() if line.startswith(">"))
    assert "memory node, reserved no-map" in region_row
    assert "RAM /memory@40000000 reg[0]" in res.stdout and "findings: none" in res.stdout
    labels = {g.get("data-label") for g in ET.parse(svg).getroot().iter(f"{SVG_NS}g")}
    assert "/memory@40000000 reg[0]" in labels
    # The same DTB with the region put in usable RAM: check's finding inline, exit 1.
    res = cli_subprocess("map", "--dtb", str(dtb), "--region", "0x80000000:64K", env=plain_env())
    assert res.returncode == 1, res.stderr
    assert "findings (1):" in res.stdout and "! ipa-in-ram: vCPUs 0-511" in res.stdout
    assert any(line.startswith("! ") and "STOLEN-TIME" in line for line in res.stdout.splitlines())
    # check's own findings, kept whole; what is only information is not a problem on the map.
    amap = command.from_dtb(str(dtb), "0x80000000:64K", None, None, "linux-dt")
    (finding,) = amap.findings
    assert (finding.severity, finding.code) == (Severity.ERROR, "ipa-in-ram")
    assert finding.message.startswith("ipa-in-ram: vCPUs 0-511")
    assert finding.range is not None and finding.range.overlaps(amap.source.region)
    assert finding.source.startswith("/memory@40000000")


LONG_PATHS_DTS = """/dts-v1/;
/ {
\t#address-cells = <2>;
\t#size-cells = <2>;
\tmemory@40000000 { device_type = "memory"; reg = <0x0 0x40000000 0x0 0x40000000>; };
\tsoc {
\t\t#address-cells = <2>;
\t\t#size-cells = <2>;
\t\tcompatible = "simple-bus";
\t\tranges;
\t\tinterconnect-with-a-rather-long-name@9000000 {
\t\t\t#address-cells = <2>;
\t\t\t#size-cells = <2>;
\t\t\tcompatible = "simple-bus";
\t\t\tranges;
\t\t\tserial-port-with-an-even-longer-name@9000000 {
\t\t\t\treg = <0x0 0x9000000 0x0 0x1000>;
\t\t\t};
\t\t};
\t};
};
"""


def _column_starts(header: str) -> list[int]:
    return [header.index(word) for word in ("size", "what", "described by", "memslot")]


def test_dtb_mode_long_node_paths_keep_the_columns_aligned(tmp_path: Path) -> None:
    src, dtb = tmp_path / "long.dts", tmp_path / "long.dtb"
    src.write_text(LONG_PATHS_DTS)
    res = run([proc.program("dtc", "apt-get install device-tree-compiler"), "-q", "-I", "dts",
               "-O", "dtb", "-o", str(dtb), str(src)])  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = cli_subprocess("map", "--dtb", str(dtb), "--region", "0x090a0000:64K", env=plain_env())
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("start"))
    starts = _column_starts(header)
    rows = [line for line in lines if re.match(r"[ >!] 0x[0-9a-f]+  0x[0-9a-f]+  ", line)]
    long = [r for r in rows if "serial-port-with-an-even-longer-name" in r]
    assert len(long) == 1 and len(long[0]) > 100
    for row in rows:
        for start in starts:  # every cell starts under its heading, after two spaces
            assert row[start - 2 : start] == "  " and row[start] != " ", (row, start)
    # a region of 16 granules: the first and last, the rest counted
    wide = terminal.granules_around(command.from_dtb(str(dtb), "0x100000:1M", 1, None, "linux-dt"))
    assert [(label, g.base, g.size) for label, g, _ in wide] == [
        ("before the region", 0xF0000, 0x10000),
        ("region 1 of 16", 0x100000, 0x10000),
        ("", 0x110000, 14 * 0x10000),
        ("region 16 of 16", 0x1F0000, 0x10000),
        ("after the region", 0x200000, 0x10000),
    ]


def test_granules_around_the_region_are_drawn() -> None:
    res = cli_subprocess("map", "examples/qemu-virt.yaml", env=plain_env())
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    at = lines.index("  64 KiB granules around the region (what shares each one):")
    assert lines[at + 1 : at + 4] == [
        "    0x0009090000-0x000909ffff  before the region   device qemu-virt:nvdimm-acpi, gap",
        "  > 0x00090a0000-0x00090affff  region 1 of 1       STOLEN-TIME REGION, gap",
        "    0x00090b0000-0x00090bffff  after the region    device qemu-virt:secure-gpio, gap",
    ]
    one = terminal.granules_around(command.from_description(ROOT / "examples/generic-hole.yaml"))
    assert [label for label, _, _ in one] == [
        "before the region", "region 1 of 1", "after the region"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (["--dtb", "x.dtb"], "pvdesc: error: --dtb: --dtb needs --region BASE:SIZE\n"),
        (
            ["--dtb", "examples/numa-2node.yaml", "--region", "0:64K"],
            "pvdesc: error: examples/numa-2node.yaml: not a DTB: magic is 0x23205477, "
            "expected 0xd00dfeed\n",
        ),
        (
            ["examples/numa-2node.yaml", "--dtb", "x.dtb", "--region", "0:64K"],
            "pvdesc: error: map takes a VM description or --dtb, not both\n",
        ),
        (
            ["--dtb", "x.dtb", "--region", "zz"],
            "pvdesc: error: x.dtb: cannot read: No such file or directory\n",
        ),
    ],
)
def test_dtb_bad_input_is_one_line_exit_2(args: list[str], stderr: str) -> None:
    res = cli_subprocess("map", *args)
    assert res.returncode == 2
    assert res.stderr == stderr and res.stdout == ""
