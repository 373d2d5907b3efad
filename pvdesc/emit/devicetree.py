"""Write the guest devicetree (DTS and DTB) for a layout.

This is the only module that imports the ``fdt`` package (pyFDT 0.3.3).  Its
DTB output is byte-identical to dtc's for the same tree (docs/dt-libraries.md §1),
but it has bugs on exactly our paths, so this wrapper:

- always passes ``entries=[]`` (bug 1: a shared mutable default);
- writes booleans such as ``no-map`` as empty :class:`fdt.Property` (bug 6:
  ``True`` becomes ``<1>``);
- splits every 64-bit value into u32 cells itself and never relies on the
  package's ``assert`` checks (bug 5: they vanish under ``python -O``);
- validates node names itself (bug 8) and never emits /memreserve/ (bug 10);
- imports it with warnings silenced (bug 11: ``SyntaxWarning`` under ``-W error``);
- never calls ``parse_dts``/``parse_dtb`` (bugs 2, 4, 12): DTBs are read with
  libfdt in :mod:`pvdesc.read.dtb`.

Tree shape (DT spec §3; Linux reserved-memory binding; docs/pvtime-and-dt.md §4):

- ``/``: ``#address-cells = <2>``, ``#size-cells = <2>``, ``compatible``, ``model``;
- one ``memory@<base>`` per RAM range the guest may know of, with
  ``device_type = "memory"``, ``reg`` and (with NUMA) ``numa-node-id``;
- with reserved ranges: ``/reserved-memory`` with the root's cells and an empty
  ``ranges``, holding ``stolen-time@<base>`` with ``reg`` and empty ``no-map``.

The overlay (``NAME.dtso``/``NAME.dtbo``, :func:`render_overlay`) carries the same
nodes for a VMM's own tree, in the devicetree overlay format Linux
(``Documentation/devicetree/overlay-notes.rst``), dtc's ``fdtoverlay`` and U-Boot
apply: ``fragment@0`` with ``target-path = "/"`` whose ``__overlay__`` holds the
``memory@<base>`` nodes, and (with reserved ranges) ``fragment@1``, also on ``/``,
holding ``/reserved-memory``.  Targeting the root by path, never by label, it
applies to any base tree: a node the base lacks is added, one it has gets these
properties set (``libfdt`` ``fdt_overlay_apply``).  An overlay cannot delete, so a
base memory node whose name is not one of the layout's stays: ``--into`` is for that.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, NamedTuple

from pvdesc.core.ranges import Range
from pvdesc.errors import DTError
from pvdesc.layout.allocate import Layout

#: Root cells: 2/2, so any 64-bit address and size fits (QEMU does the same).
ADDRESS_CELLS = 2
SIZE_CELLS = 2
#: Write DTB version 17, last compatible 16 (docs/dt-libraries.md §6.2).
DTB_VERSION = 17
#: The ``compatible`` of QEMU's virt root node, which pvdesc's tree is merged into.
ROOT_COMPATIBLE = "linux,dummy-virt"
#: Node name of the region's reserved-memory child.  The reserved-memory binding asks
#: that names "reflect the purpose of the node" (docs/pvtime-and-dt.md §4).
REGION_NODE = "stolen-time"

_NODE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9,._+-]*(@(0|[1-9a-f][0-9a-f]*))?$")


def _fdt() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fdt

        return fdt


class EmittedTree(NamedTuple):
    """The emitted devicetree: the DTS source and the blob dtc makes of it.

    Attributes:
        dts: DTS source text (compiles with dtc to exactly ``dtb``).
        dtb: the flattened blob, version 17.
    """

    dts: str
    dtb: bytes


def unit_address(addr: int) -> str:
    """Lowercase hex, no ``0x``, no leading zeros (dtc ``unit_address_format``)."""
    return f"{addr:x}"


def cells(value: int, n: int) -> list[int]:
    """Split ``value`` into ``n`` big-endian u32 cells; refuse values that do not fit."""
    if value < 0 or value >> (32 * n):
        raise DTError(f"value {value:#x} does not fit in {n} cells")
    return [(value >> (32 * (n - 1 - i))) & 0xFFFFFFFF for i in range(n)]


def reg(r: Range) -> list[int]:
    """A ``reg`` entry under 2/2 cells."""
    return cells(r.base, ADDRESS_CELLS) + cells(r.size, SIZE_CELLS)


def _node(fdt: Any, name: str) -> Any:
    if not _NODE_NAME_RE.fullmatch(name):
        raise DTError(f"invalid node name {name!r}")
    return fdt.Node(name)


def build_tree(layout: Layout) -> Any:
    """The ``fdt.FDT`` object for a layout (property order fixed for stable bytes)."""
    fdt = _fdt()
    tree = fdt.FDT(entries=[])
    root = tree.root
    root.append(fdt.PropWords("#address-cells", ADDRESS_CELLS))
    root.append(fdt.PropWords("#size-cells", SIZE_CELLS))
    root.append(fdt.PropStrings("compatible", ROOT_COMPATIBLE))
    root.append(fdt.PropStrings("model", f"pvdesc {layout.description.name}"))
    for node in _memory_nodes(fdt, layout):
        root.append(node)
    if layout.reserved:
        root.append(_reserved_memory(fdt, layout))
    return tree


#: Node names the overlay format fixes (``overlay-notes.rst``); outside ``_NODE_NAME_RE``.
OVERLAY_NODE = "__overlay__"


def _memory_nodes(fdt: Any, layout: Layout) -> list[Any]:
    nodes = []
    for mem in layout.memory_nodes:
        node = _node(fdt, f"memory@{unit_address(mem.range.base)}")
        node.append(fdt.PropStrings("device_type", "memory"))
        node.append(fdt.PropWords("reg", *reg(mem.range)))
        if mem.numa_node is not None:
            node.append(fdt.PropWords("numa-node-id", mem.numa_node))
        nodes.append(node)
    return nodes


def _reserved_memory(fdt: Any, layout: Layout) -> Any:
    parent = _node(fdt, "reserved-memory")
    parent.append(fdt.PropWords("#address-cells", ADDRESS_CELLS))
    parent.append(fdt.PropWords("#size-cells", SIZE_CELLS))
    parent.append(fdt.Property("ranges"))
    for r in layout.reserved:
        child = _node(fdt, f"{REGION_NODE}@{unit_address(r.base)}")
        child.append(fdt.PropWords("reg", *reg(r)))
        child.append(fdt.Property("no-map"))
        parent.append(child)
    return parent


def build_overlay(layout: Layout) -> Any:
    """The overlay's ``fdt.FDT``: one fragment per part, each targeting ``/`` by path."""
    fdt = _fdt()
    tree = fdt.FDT(entries=[])
    parts = [_memory_nodes(fdt, layout)]
    if layout.reserved:
        parts.append([_reserved_memory(fdt, layout)])
    for index, nodes in enumerate(parts):
        fragment = _node(fdt, f"fragment@{index}")
        fragment.append(fdt.PropStrings("target-path", "/"))
        body = fdt.Node(OVERLAY_NODE)
        for node in nodes:
            body.append(node)
        fragment.append(body)
        tree.root.append(fragment)
    return tree


def render_overlay(layout: Layout, header: str = "") -> EmittedTree:
    """The overlay as DTS (``/plugin/``; compiles with dtc to exactly the blob) and DTB."""
    tree = build_overlay(layout)
    dtb = bytes(tree.to_dtb(version=DTB_VERSION))
    lines = [ln for ln in tree.to_dts().splitlines() if not ln.startswith("//")]
    text = "\n".join(lines).strip()
    if not text.startswith("/dts-v1/;\n"):
        raise DTError("internal: the fdt package's DTS does not start with /dts-v1/;")
    dts = header + text.replace("/dts-v1/;\n", "/dts-v1/;\n/plugin/;\n", 1) + "\n"
    return EmittedTree(dts=dts, dtb=dtb)


def render(layout: Layout, header: str = "") -> EmittedTree:
    """DTS text (``header`` first, as a comment block) and the DTB for a layout."""
    tree = build_tree(layout)
    dtb = bytes(tree.to_dtb(version=DTB_VERSION))
    body = tree.to_dts()
    # pyFDT starts with "/dts-v1/;" preceded by "// version:" comment lines; keep ours.
    lines = [ln for ln in body.splitlines() if not ln.startswith("//")]
    dts = header + "\n".join(lines).strip() + "\n"
    return EmittedTree(dts=dts, dtb=dtb)
