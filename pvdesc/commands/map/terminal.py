"""The map as terminal text: the occupant and description cells, the bar, the rows, the granules.

:func:`render_text` is what ``pvdesc map`` prints; the cell texts (:func:`what_text`,
:func:`described_text`, :func:`structure_text`) and :func:`granules_around` are shared
with the pictures (:mod:`pvdesc.commands.map.draw`).  Sizes print through
:func:`pvdesc.core.units.size_text`.  Pure: strings out, no I/O.
"""

from __future__ import annotations

from pvdesc import kvm
from pvdesc.commands.map.model import AddressMap, Segment, SegmentKind, Structure
from pvdesc.commands.map.scale import Scaling, scale
from pvdesc.core.ranges import Range
from pvdesc.core.units import size_text


def what_text(seg: Segment) -> str:
    """The occupant column: ``RAM memory[0] node 0``, ``device uart0``, ``gap``."""
    if seg.kind is SegmentKind.RAM:
        node = f" node {seg.numa_node}" if seg.numa_node is not None else ""
        return f"RAM {seg.label}{node}"
    if seg.kind is SegmentKind.DEVICE:
        return f"device {seg.label}"
    if seg.kind is SegmentKind.REGION:
        return "STOLEN-TIME REGION"
    return "gap"


def described_text(seg: Segment) -> str:
    """The description column: who says what about these addresses."""
    if seg.described:
        return ", ".join(str(d) for d in seg.described)
    if seg.kind is SegmentKind.REGION:
        return "nothing (outside /memory)"
    return "-"


def structure_text(st: Structure) -> str:
    """One detail row's name: ``vCPU 3``, ``... 10 more``, ``unused``."""
    if st.vcpu is not None:
        return f"vCPU {st.vcpu}"
    if st.note == "...":
        return f"... {st.skipped} more"
    return st.note


_SGR = {
    SegmentKind.RAM: "32",
    SegmentKind.DEVICE: "34",
    SegmentKind.REGION: "1;30;43",
    SegmentKind.GAP: "2",
}
_FLAG = "1;31"
_BAR_CHAR = {
    SegmentKind.RAM: "R",
    SegmentKind.DEVICE: "D",
    SegmentKind.REGION: "S",
    SegmentKind.GAP: ".",
}
BAR_WIDTH = 72


def _paint(text: str, sgr: str, color: bool) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m" if color and text else text


def _bar(amap: AddressMap, color: bool) -> str:
    segs = amap.segments
    ext = scale(
        [s.range.size for s in segs], BAR_WIDTH, 1, gaps=[s.kind is SegmentKind.GAP for s in segs]
    )
    out = []
    for seg, e in zip(segs, ext, strict=True):
        width = max(1, round(e.length))
        compressed_gap = seg.kind is SegmentKind.GAP and e.scaling is Scaling.COMPRESSED
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
        mark = "!" if seg.flagged else (">" if seg.kind is SegmentKind.REGION else " ")
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
