"""Render an :class:`~pvdesc.commands.map.model.AddressMap`: terminal text, SVG and HTML.

Everything here is pure (strings in, strings out) except :func:`write`, which
hands the rendered files to :func:`pvdesc.emit.build.write_outputs` (temp file +
fsync + rename).  SVG and HTML come from ``templates/map.svg.j2`` and
``templates/map.html.j2``, which autoescape every value
(:mod:`pvdesc.emit.templating`); the geometry is computed here so the templates
only draw.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from pvdesc import __version__, kvm
from pvdesc.commands.map.model import (
    AddressMap,
    Describer,
    Kind,
    Scaling,
    Segment,
    Structure,
    scale,
)
from pvdesc.core.ranges import Range
from pvdesc.core.units import size_text
from pvdesc.emit import templating
from pvdesc.emit.build import Output, write_outputs


class ColorMode(enum.StrEnum):
    """``--color``: ``auto`` colours only a terminal, and only without ``NO_COLOR``."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


def use_color(mode: ColorMode, isatty: bool, environ: Mapping[str, str]) -> bool:
    """Whether to colour: ``always``/``never`` win; ``auto`` needs a TTY and no ``NO_COLOR``.

    https://no-color.org: ``NO_COLOR`` set to a non-empty value disables colour.
    """
    if mode is ColorMode.ALWAYS:
        return True
    if mode is ColorMode.NEVER:
        return False
    return isatty and not environ.get("NO_COLOR")


def what_text(seg: Segment) -> str:
    """The occupant column: ``RAM memory[0] node 0``, ``device uart0``, ``gap``."""
    if seg.kind is Kind.RAM:
        node = f" node {seg.numa_node}" if seg.numa_node is not None else ""
        return f"RAM {seg.label}{node}"
    if seg.kind is Kind.DEVICE:
        return f"device {seg.label}"
    if seg.kind is Kind.REGION:
        return "STOLEN-TIME REGION"
    return "gap"


def described_text(seg: Segment) -> str:
    """The description column: who says what about these addresses."""
    if seg.described:
        return ", ".join(str(d) for d in seg.described)
    if seg.kind is Kind.REGION:
        return "nothing (outside /memory)"
    return "-"


def structure_text(st: Structure) -> str:
    """One detail row's name: ``vCPU 3``, ``... 10 more``, ``unused``."""
    if st.vcpu is not None:
        return f"vCPU {st.vcpu}"
    if st.note == "...":
        return f"... {st.skipped} more"
    return st.note


# ---------------------------------------------------------------------------- terminal

_SGR = {
    Kind.RAM: "32",
    Kind.DEVICE: "34",
    Kind.REGION: "1;30;43",
    Kind.GAP: "2",
}
_FLAG = "1;31"
_BAR_CHAR = {Kind.RAM: "R", Kind.DEVICE: "D", Kind.REGION: "S", Kind.GAP: "."}
BAR_WIDTH = 72


def _paint(text: str, sgr: str, color: bool) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m" if color and text else text


def _bar(amap: AddressMap, color: bool) -> str:
    segs = amap.segments
    ext = scale([s.range.size for s in segs], BAR_WIDTH, 1, gaps=[s.kind is Kind.GAP for s in segs])
    out = []
    for seg, e in zip(segs, ext, strict=True):
        width = max(1, round(e.length))
        compressed_gap = seg.kind is Kind.GAP and e.scaling is Scaling.COMPRESSED
        ch = "~" if compressed_gap else _BAR_CHAR[seg.kind]
        out.append(_paint(ch * width, _FLAG if seg.flagged else _SGR[seg.kind], color))
    return "".join(out)


#: Region granules listed one by one up to this many (a VMM slot is one granule; pvdesc's
#: region is at most 512 x 64 B); beyond, the first and last are shown around a count.
GRANULES_SHOWN = 4


def granules_around(amap: AddressMap) -> tuple[tuple[str, Range, str], ...]:
    """The region's 64 KiB granules and the one on each side: ``(label, granule, occupants)``.

    pvtime.rst asks for whole 64 KiB pages that hold nothing else, so each granule
    lists every segment in it (``STOLEN-TIME REGION, gap``): a granule of the region
    that also holds RAM or a device is the finding ``granule-shared-with-*``.
    """
    region = amap.source.region
    first = region.base // kvm.GRANULE
    last = region.last // kvm.GRANULE
    limit = amap.source.limit

    def occupants(granule: Range) -> str:
        names: list[str] = []
        for seg in amap.segments:
            if seg.range.overlaps(granule) and what_text(seg) not in names:
                names.append(what_text(seg))
        return ", ".join(names) or "-"

    def row(label: str, index: int) -> tuple[str, Range, str]:
        granule = Range(index * kvm.GRANULE, kvm.GRANULE)
        return label, granule, occupants(granule)

    rows = []
    if first > 0:
        rows.append(row("before the region", first - 1))
    count = last - first + 1
    indices = list(range(first, last + 1))
    if count > GRANULES_SHOWN:
        indices = [first, last]
    for i in indices:
        rows.append(row(f"region {i - first + 1} of {count}", i))
        if count > GRANULES_SHOWN and i == first:
            rows.append(("", Range((first + 1) * kvm.GRANULE, (count - 2) * kvm.GRANULE), "..."))
    if (last + 1) * kvm.GRANULE < limit:
        rows.append(row("after the region", last + 1))
    return tuple(rows)


def render_text(amap: AddressMap, color: bool = False) -> str:
    """The terminal map: header, bar, one row per segment, region detail, findings."""
    src = amap.source
    digits = amap.address_digits
    hw = digits + 2

    def hx(v: int) -> str:
        return f"{v:#0{hw}x}"

    lines = [
        _paint(src.title, "1", color) + "  " + "  ".join(f"{k} {v}" for k, v in src.facts),
        f"region {hx(src.region.base)}-{hx(src.region.last)} ({size_text(src.region.size)}), "
        f"{src.structures} x 64 B, vCPU n at {src.region.base:#x} + 64*n",
        "",
        f"  {0:#x} [{_bar(amap, color)}] {src.limit:#x}",
        "  R RAM  D device  S stolen-time region  . gap  ~ gap (compressed, not to scale)",
        "",
    ]
    # Columns as wide as their widest cell (long DT node paths in --dtb mode included).
    cells = [
        (seg, size_text(seg.range.size), what_text(seg), described_text(seg))
        for seg in amap.segments
    ]
    sw = max([len("size"), *(len(c[1]) for c in cells)])
    ww = max([len("what"), *(len(c[2]) for c in cells)])
    dw = max([len("described by"), *(len(c[3]) for c in cells)])
    lines.append(
        f"  {'start':<{hw}}  {'last':<{hw}}  {'size':<{sw}}  {'what':<{ww}}  "
        f"{'described by':<{dw}}  memslot"
    )
    for seg, size, what, described in cells:
        mark = "!" if seg.flagged else (">" if seg.kind is Kind.REGION else " ")
        slot = "-" if seg.memslot is None else str(seg.memslot)
        row = (
            f"{mark} {hx(seg.range.base)}  {hx(seg.range.last)}  {size:<{sw}}  "
            f"{_paint(f'{what:<{ww}}', _FLAG if seg.flagged else _SGR[seg.kind], color)}  "
            f"{described:<{dw}}  {slot}"
        )
        lines.append(row.rstrip())
    lines += ["", "  64 KiB granules around the region (what shares each one):"]
    for label, granule, occupants in granules_around(amap):
        mark = ">" if label.startswith("region") else " "
        lines.append(
            f"  {mark} {hx(granule.base)}-{hx(granule.last)}  {label:<18}  {occupants}".rstrip()
        )
    lines += ["", f"  region detail ({src.region.base:#x}, 64 B per vCPU):"]
    for st in amap.detail:
        lines.append(
            f"    {structure_text(st):<14}  {hx(st.range.base)}-{hx(st.range.last)}  "
            f"{size_text(st.range.size)}"
        )
    lines.append("")
    if amap.findings:
        lines.append(_paint(f"findings ({len(amap.findings)}):", _FLAG, color))
        lines += [
            f"  ! {f.message}" + (f" [{f.range}]" if f.range is not None else "")
            for f in amap.findings
        ]
    else:
        lines.append("findings: none (the region overlaps no RAM the guest may use)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- pictures

RAM_FILLS = ("#69db7c", "#38d9a9", "#a9e34b", "#3bc9db")
FILL = {Kind.DEVICE: "#91a7ff", Kind.REGION: "#ff6b6b", Kind.GAP: "#f1f3f5"}
DESCRIBER_FILL = {
    Describer.MEMORY_NODE: "#2b8a3e",
    Describer.RESERVED_NO_MAP: "#f59f00",
    Describer.EXCLUDED: "#ffffff",
    Describer.ACPI_CLAIM: "#7048e8",
}

WIDTH = 1220
TOP = 110
ADDR_X = 160
MAP_X = 176
MAP_W = 190
DESC_X = 372
DESC_W = 14
LABEL_X = 396
DETAIL_X = 900
DETAIL_W = 280
ROW_MIN = 22
DETAIL_ROW = 30
GRANULE_ROW = 36


@dataclass(frozen=True)
class Box:
    """One segment as drawn.

    Attributes:
        index: position in the map.
        seg: the segment.
        y: top edge.
        h: height.
        fill: fill colour.
        scaling: to scale, compressed or enlarged.
        what: occupant text.
        described: description text.
        size: size text.
        describers: ``(x, width, fill, name)`` stripes of the description column.
    """

    index: int
    seg: Segment
    y: float
    h: float
    fill: str
    scaling: Scaling
    what: str
    described: str
    size: str
    describers: tuple[tuple[float, float, str, str], ...]

    @property
    def mid(self) -> float:
        """The vertical centre."""
        return self.y + self.h / 2

    @property
    def compressed(self) -> bool:
        """True when drawn shorter than to scale (a break mark is drawn)."""
        return self.scaling is Scaling.COMPRESSED


@dataclass(frozen=True)
class LegendItem:
    """A legend entry.

    Attributes:
        key: a stable id (``ram``, ``device``, ``break``...).
        fill: swatch colour.
        text: what it means.
        dashed: True for a dashed swatch outline.
    """

    key: str
    fill: str
    text: str
    dashed: bool = False


def _ram_fill(node: int | None) -> str:
    return RAM_FILLS[(node or 0) % len(RAM_FILLS)]


def boxes(amap: AddressMap) -> tuple[Box, ...]:
    """Every segment's geometry on the vertical map axis."""
    segs = amap.segments
    target = max(600.0, ROW_MIN * len(segs) * 1.6)
    ext = scale(
        [s.range.size for s in segs], target, ROW_MIN, gaps=[s.kind is Kind.GAP for s in segs]
    )
    out = []
    for i, (seg, e) in enumerate(zip(segs, ext, strict=True)):
        fill = _ram_fill(seg.numa_node) if seg.kind is Kind.RAM else FILL[seg.kind]
        n = len(seg.described)
        stripes = tuple(
            (DESC_X + k * DESC_W / n, DESC_W / n, DESCRIBER_FILL[d], str(d))
            for k, d in enumerate(seg.described)
        )
        out.append(
            Box(
                index=i,
                seg=seg,
                y=TOP + e.offset,
                h=e.length,
                fill=fill,
                scaling=e.scaling,
                what=what_text(seg),
                described=described_text(seg),
                size=size_text(seg.range.size),
                describers=stripes,
            )
        )
    return tuple(out)


def legend(amap: AddressMap) -> tuple[LegendItem, ...]:
    """The legend: RAM per NUMA node present, devices, region, gaps, break, describers."""
    nodes = sorted({s.numa_node for s in amap.segments if s.kind is Kind.RAM}, key=lambda n: n or 0)
    items = [
        LegendItem(
            f"ram-node-{n}" if n is not None else "ram",
            _ram_fill(n),
            f"RAM, NUMA node {n}" if n is not None else "RAM",
        )
        for n in nodes
    ]
    items += [
        LegendItem("device", FILL[Kind.DEVICE], "device (MMIO)"),
        LegendItem("region", FILL[Kind.REGION], "stolen-time region"),
        LegendItem("gap", FILL[Kind.GAP], "gap (nothing mapped)", dashed=True),
        LegendItem("break", "#ffffff", "break mark: compressed, not to scale"),
    ]
    items += [
        LegendItem(f"describer-{d.name.lower()}", DESCRIBER_FILL[d], f"described: {d}")
        for d in Describer
    ]
    items.append(LegendItem("memslot", "#495057", "memslot boundary (dashed line)"))
    return tuple(items)


def _zoom(amap: AddressMap, bx: Sequence[Box]) -> tuple[float, float] | None:
    region = next((b for b in bx if b.seg.kind is Kind.REGION), None)
    return (region.y, region.y + region.h) if region is not None else None


def memslot_edges(bx: Sequence[Box]) -> tuple[tuple[float, str], ...]:
    """Heights where a memslot begins or ends, with a label."""
    out: list[tuple[float, str]] = []
    for prev, cur in zip((None, *bx), (*bx, None), strict=True):
        before = prev.seg.memslot if prev is not None else None
        after = cur.seg.memslot if cur is not None else None
        if before != after:
            y = cur.y if cur is not None else (prev.y + prev.h if prev is not None else TOP)
            label = f"memslot {after}" if after is not None else f"end of memslot {before}"
            out.append((y, label))
    return tuple(out)


def svg_context(amap: AddressMap) -> dict[str, object]:
    """Everything ``map.svg.j2`` draws."""
    bx = boxes(amap)
    map_bottom = (bx[-1].y + bx[-1].h) if bx else TOP
    detail_top = TOP + 40
    detail_bottom = detail_top + DETAIL_ROW * len(amap.detail)
    granules_top = detail_bottom + 44
    granules = granules_around(amap)
    granules_bottom = granules_top + GRANULE_ROW * len(granules)
    legend_items = legend(amap)
    legend_top = granules_bottom + 40
    legend_bottom = legend_top + 24 + 22 * len(legend_items)
    height = max(map_bottom + 50, legend_bottom + 20)
    zoom = _zoom(amap, bx)
    return {
        "amap": amap,
        "src": amap.source,
        "boxes": bx,
        "detail": [
            (detail_top + i * DETAIL_ROW, st, structure_text(st))
            for i, st in enumerate(amap.detail)
        ],
        "detail_top": detail_top,
        "detail_bottom": detail_bottom,
        "granules_top": granules_top,
        "granules": [
            (granules_top + i * GRANULE_ROW, label, granule, occupants)
            for i, (label, granule, occupants) in enumerate(granules)
        ],
        "zoom": zoom,
        "legend": legend_items,
        "legend_top": legend_top,
        "memslot_edges": memslot_edges(bx),
        "map_bottom": map_bottom,
        "width": WIDTH,
        "height": height,
        "digits": amap.address_digits,
        "geo": {
            "addr_x": ADDR_X,
            "map_x": MAP_X,
            "map_w": MAP_W,
            "desc_x": DESC_X,
            "desc_w": DESC_W,
            "label_x": LABEL_X,
            "detail_x": DETAIL_X,
            "detail_w": DETAIL_W,
            "detail_row": DETAIL_ROW,
            "granule_row": GRANULE_ROW,
            "zoom_x": DETAIL_X - 40,
        },
        "size_text": size_text,
        "version": __version__,
    }


def render_svg(amap: AddressMap) -> str:
    """The map as a standalone SVG document."""
    return templating.render("map.svg.j2", **svg_context(amap))


def render_html(amap: AddressMap) -> str:
    """A standalone HTML page: the SVG inline, a legend, and the addresses as tables."""
    ctx = svg_context(amap)
    svg = render_svg(amap).split("?>", 1)[-1]  # drop the XML declaration inside HTML
    return templating.render("map.html.j2", svg=Markup(svg), **ctx)


def outputs(
    amap: AddressMap, svg: Path | None, html: Path | None
) -> tuple[tuple[Path, Output], ...]:
    """Render the requested files (no I/O): ``(directory, Output)`` pairs."""
    out: list[tuple[Path, Output]] = []
    if svg is not None:
        out.append((svg.parent, Output(svg.name, "svg", render_svg(amap).encode())))
    if html is not None:
        out.append((html.parent, Output(html.name, "html", render_html(amap).encode())))
    return tuple(out)


def write(files: Sequence[tuple[Path, Output]]) -> None:
    """Write rendered files atomically, one directory at a time."""
    by_dir: dict[Path, list[Output]] = {}
    for directory, out in files:
        by_dir.setdefault(directory, []).append(out)
    for directory in by_dir:
        write_outputs(directory, ())  # create every directory before writing any file
    for directory, outs in by_dir.items():
        write_outputs(directory, outs)


def from_description(path: str | Path) -> AddressMap:
    """Load and allocate a description and map it; errors name file:line:column."""
    from pvdesc.commands.map import model as addrmap
    from pvdesc.description.load import load
    from pvdesc.errors import PvdescError
    from pvdesc.layout import allocate as layout

    loaded = load(path)
    try:
        lay = layout.allocate(loaded.description)
    except PvdescError as err:
        raise loaded.source.resolve(err) from None
    return addrmap.build(addrmap.from_layout(lay))


def from_dtb(
    path: str, region: str, vcpus: int | None, ipa_bits: int | None, boot: str
) -> AddressMap:
    """Read a DTB, check it against ``--region`` and map it with the findings inline.

    Without ``vcpus`` the region is taken to be full: ``size // 64`` structures
    (at most ``KVM_MAX_VCPUS``).
    """
    from pvdesc import kvm
    from pvdesc.audit import check
    from pvdesc.commands.map import model as addrmap
    from pvdesc.core.model import Boot
    from pvdesc.errors import PvdescError
    from pvdesc.read import dtb
    from pvdesc.tools.inputs import display_name

    tree = dtb.load(path)
    bits = kvm.IPA_BITS_DEFAULT if ipa_bits is None else ipa_bits
    if vcpus is None:
        probe = check.target_from_region(region, 1, bits)
        vcpus = max(1, min(probe.region.size // kvm.PVTIME_STRUCT_SIZE, kvm.KVM_MAX_VCPUS))
    target = check.target_from_region(region, vcpus, bits)
    findings = check.check(tree, target, Boot(boot))
    try:
        return addrmap.build(addrmap.from_dtb(tree, target, Boot(boot), findings))
    except PvdescError as err:
        err.where = err.where or display_name(path)
        raise


def run(amap: AddressMap, *, svg: Path | None, html: Path | None, color: bool) -> str:
    """Render every requested file before writing any, write them, return the terminal text."""
    files = outputs(amap, svg, html)
    text = render_text(amap, color=color)
    write(files)
    return text
