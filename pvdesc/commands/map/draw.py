"""The map as pictures: SVG and HTML geometry, colours and legend, rendered from templates.

The geometry is computed here so ``templates/map.svg.j2`` and ``templates/map.html.j2``
only draw; they autoescape every value (:mod:`pvdesc.emit.templating`).  Cell texts
come from :mod:`pvdesc.commands.map.terminal`, sizes from :func:`pvdesc.core.units.size_text`.
Pure: strings out, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from markupsafe import Markup

from pvdesc import __version__
from pvdesc.commands.map.model import AddressMap, Describer, Segment, SegmentKind
from pvdesc.commands.map.scale import Scaling, scale
from pvdesc.commands.map.terminal import described_text, granules_around, structure_text, what_text
from pvdesc.core.units import size_text
from pvdesc.emit import templating

RAM_FILLS = ("#69db7c", "#38d9a9", "#a9e34b", "#3bc9db")
FILL = {SegmentKind.DEVICE: "#91a7ff", SegmentKind.REGION: "#ff6b6b", SegmentKind.GAP: "#f1f3f5"}
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


class Box(NamedTuple):
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

    index: int  # type: ignore[assignment]  # shadows tuple.index, which no caller uses
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


class LegendItem(NamedTuple):
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
        [s.range.size for s in segs],
        target,
        ROW_MIN,
        gaps=[s.kind is SegmentKind.GAP for s in segs],
    )
    out = []
    for i, (seg, e) in enumerate(zip(segs, ext, strict=True)):
        fill = _ram_fill(seg.numa_node) if seg.kind is SegmentKind.RAM else FILL[seg.kind]
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
    nodes = sorted(
        {s.numa_node for s in amap.segments if s.kind is SegmentKind.RAM}, key=lambda n: n or 0
    )
    items = [
        LegendItem(
            f"ram-node-{n}" if n is not None else "ram",
            _ram_fill(n),
            f"RAM, NUMA node {n}" if n is not None else "RAM",
        )
        for n in nodes
    ]
    items += [
        LegendItem("device", FILL[SegmentKind.DEVICE], "device (MMIO)"),
        LegendItem("region", FILL[SegmentKind.REGION], "stolen-time region"),
        LegendItem("gap", FILL[SegmentKind.GAP], "gap (nothing mapped)", dashed=True),
        LegendItem("break", "#ffffff", "break mark: compressed, not to scale"),
    ]
    items += [
        LegendItem(f"describer-{d.name.lower()}", DESCRIBER_FILL[d], f"described: {d}")
        for d in Describer
    ]
    items.append(LegendItem("memslot", "#495057", "memslot boundary (dashed line)"))
    return tuple(items)


def _zoom(amap: AddressMap, bx: Sequence[Box]) -> tuple[float, float] | None:
    region = next((b for b in bx if b.seg.kind is SegmentKind.REGION), None)
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
