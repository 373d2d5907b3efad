"""Patch a VMM's own DTB (``pvdesc build --into BASE``) with libfdt.

The base (e.g. ``qemu-system-aarch64 -machine virt,dumpdtb=base.dtb``) is
validated with ``fdt_check_full`` first.  Then, in order:

1. every node's MMIO windows are collected by :func:`pvdesc.read.dtb.parse` (with all
   its limits): ``reg`` decoded with the parent's ``#address-cells``/``#size-cells``
   (default 2/1, DT spec §2.3.5; the root must state its own) and translated
   to CPU addresses through each ancestor's ``ranges`` (empty = identity; a node
   under an ancestor without ``ranges``, or with ``#size-cells = 0`` such as
   ``/cpus``, is not memory-mapped); non-empty ``ranges`` windows count too
   (PCIe MMIO).  ``/memory`` nodes and ``/reserved-memory`` children are not devices;
2. if any window collides with the stolen-time region (shares a 64 KiB granule
   with it; for a region inside VMM system memory, overlaps it) the patch is refused,
   and so is a memory node below the root touching it (only the root's are replaced)
   or, when a ``no-map`` child is needed, a base ``/reserved-memory`` Linux ignores;
   the patched tree is then judged by ``pvdesc check``'s rules (:func:`check_patched`);
3. the root's ``device_type = "memory"`` nodes are replaced by the layout's ``/memory``
   nodes, and ``/reserved-memory`` (root cells, empty ``ranges``) gets or updates the
   layout's ``stolen-time@<base>`` ``no-map`` child.

Everything else is left as it was.  Errors are :class:`~pvdesc.errors.DTError`.
"""

from __future__ import annotations

from collections.abc import Iterator

import libfdt

from pvdesc.core.findings import Severity
from pvdesc.core.model import Boot
from pvdesc.core.ranges import Range
from pvdesc.description import profiles
from pvdesc.emit.devicetree import REGION_NODE, unit_address
from pvdesc.errors import DTError
from pvdesc.layout import beliefs, rules
from pvdesc.layout.allocate import Layout, target
from pvdesc.layout.allocate import belief as layout_belief
from pvdesc.read import dtb

_QUIET = (libfdt.NOTFOUND,)


def _is_memory(fdt: libfdt.Fdt, node: int) -> bool:
    """A memory node as Linux's ``early_init_dt_scan_memory`` tells one (first string)."""
    prop = fdt.getprop(node, "device_type", _QUIET)
    return isinstance(prop, libfdt.Property) and dtb.first_string(bytes(prop)) == "memory"


def device_windows(tree: dtb.DeviceTree, boot: Boot = Boot.LINUX_DT) -> Iterator[tuple[str, Range]]:
    """Every memory-mapped window of a base tree as CPU addresses: (source, range).

    The device windows of :func:`pvdesc.layout.beliefs.believe` (device ``reg`` entries
    and bus ``ranges`` windows, ``/pcie@... ranges[1]``), the same ones
    ``pvdesc check`` judges.
    """
    for area in beliefs.believe(tree, boot).devices:
        yield area.label, area.range


def open_base(blob: bytes, file: str = "base DTB") -> tuple[libfdt.Fdt, dtb.DeviceTree]:
    """A validated, writable copy of a base DTB and its decoded addresses.

    ``fdt_check_full`` first, then :func:`pvdesc.read.dtb.parse`, whose limits (size,
    nodes, depth, cells, entries, translation work) apply to a base as to any
    untrusted DTB.
    """
    if len(blob) > dtb.MAX_DTB_BYTES:
        raise DTError(f"base DTB is larger than {dtb.MAX_DTB_BYTES} bytes")
    buf = bytearray(blob)
    short = len(buf) < dtb.FDT_HEADER_SIZE
    err = -libfdt.TRUNCATED if short else libfdt.fdt_check_full(buf, len(buf))
    if err:
        raise DTError(f"not a valid DTB (libfdt fdt_check_full: {libfdt.fdt_strerror(err)})")
    try:
        tree = dtb.parse(blob, file)
    except DTError as exc:
        raise DTError(f"base DTB: {exc.message}") from None
    try:
        return libfdt.Fdt(buf), tree
    except libfdt.FdtException as exc:
        raise DTError(f"not a valid DTB (libfdt: {exc})") from None


def check_collisions(tree: dtb.DeviceTree, lay: Layout) -> None:
    """Refuse a base whose devices collide with the region, or whose RAM pvdesc cannot replace.

    Devices are :func:`pvdesc.layout.beliefs.believe`'s windows.  Only the root's memory
    nodes are replaced, so memory the boot consumer still believes in afterwards
    (under UEFI, EDK2 scans every depth) must not touch the region either.
    """
    region = lay.region
    boot = lay.description.boot
    inside_system = profiles.for_description(lay.description).system_memory is not None
    zone = region if inside_system else region.granules()
    for source, r in device_windows(tree, boot):
        if r.overlaps(zone):
            verb = "overlaps" if r.overlaps(region) else "shares a 64 KiB granule with"
            raise DTError(f"base DTB node {source} {r} {verb} the stolen-time region {region}")
    for mem in beliefs.believe(tree, boot).ram:
        if mem.label.count("/") > 1 and mem.range.overlaps(zone):
            raise DTError(
                f"base DTB memory node {mem.label} {mem.range} is not under the root, so pvdesc "
                f"cannot replace it, and with boot {boot} it is RAM to "
                f"{beliefs.EDK2 if boot.uefi else beliefs.LINUX} and touches the stolen-time "
                f"region {region}"
            )


def check_patched(blob: bytes, lay: Layout) -> None:
    """Judge the patched tree with ``pvdesc check``'s rules: any error refuses the patch.

    So ``build --into`` never writes a tree ``check`` calls unsafe (what survives of
    the base, e.g. ``/chosen`` ``linux,usable-memory-range``, is judged too).  Only
    what the base adds is refused: a layout that is unsafe by itself (the proofs'
    negative controls, built with the library past ``layout.verify``) is
    ``layout.verify``'s to refuse, and keeps its own findings here.
    """
    tree = dtb.parse(blob, "patched DTB")
    goal = target(lay)
    own = {f.code for f in rules.judge(layout_belief(lay), goal)}
    for f in rules.judge(beliefs.believe(tree, lay.description.boot), goal):
        if f.severity is Severity.ERROR and f.code not in own:
            raise DTError(
                f"base DTB: the patched tree is unsafe: {f.code}: {f.source}: {f.message}"
            )


def _encode(value: int, n: int, what: str) -> bytes:
    if value < 0 or value >> (32 * n):
        raise DTError(f"{what} {value:#x} does not fit in {n} cells of the base DTB")
    return value.to_bytes(4 * n, "big")


def _reg(r: Range, ac: int, sc: int) -> bytes:
    return _encode(r.base, ac, "address") + _encode(r.size, sc, "size")


def _call(what: str, fn: object, *args: object) -> int:
    try:
        result: int = fn(*args)  # type: ignore[operator]
    except libfdt.FdtException as exc:
        raise DTError(f"cannot patch base DTB ({what}): {exc}") from None
    return result


def patch_dtb(blob: bytes, lay: Layout) -> bytes:
    """The base DTB with the layout's ``/memory`` and ``/reserved-memory`` (see module doc)."""
    fdt, tree = open_base(blob)
    check_collisions(tree, lay)
    ac, sc = tree.root_cells
    extra = 4096 + 128 * (len(lay.memory_nodes) + len(lay.reserved))
    _call("resize", fdt.resize, fdt.totalsize() + extra)
    # Delete the root's memory nodes (offsets move after each delete: rescan).
    while True:
        node = fdt.first_subnode(0, _QUIET)
        while node >= 0 and not _is_memory(fdt, node):
            node = fdt.next_subnode(node, _QUIET)
        if node < 0:
            break
        _call("del_node", fdt.del_node, node)
    for mem in reversed(lay.memory_nodes):
        node = _call("add memory", fdt.add_subnode, 0, f"memory@{unit_address(mem.range.base)}")
        _call("reg", fdt.setprop, node, "reg", _reg(mem.range, ac, sc))
        _call("device_type", fdt.setprop_str, node, "device_type", "memory")
        if mem.numa_node is not None:
            _call("numa-node-id", fdt.setprop_u32, node, "numa-node-id", mem.numa_node)
    if lay.reserved:
        parent = fdt.path_offset("/reserved-memory", _QUIET)
        if parent < 0:
            parent = _call("add reserved-memory", fdt.add_subnode, 0, "reserved-memory")
            _call("ranges", fdt.setprop, parent, "ranges", b"")
            _call("cells", fdt.setprop_u32, parent, "#size-cells", sc)
            _call("cells", fdt.setprop_u32, parent, "#address-cells", ac)
        elif tree.reserved_ignored is not None:
            raise DTError(
                f"base DTB: Linux ignores its /reserved-memory ({tree.reserved_ignored}), so a "
                "no-map child there would not keep the guest off the region; fix the base's "
                "/reserved-memory (root cells, ranges;)"
            )
        for r in lay.reserved:
            name = f"{REGION_NODE}@{unit_address(r.base)}"
            child = fdt.subnode_offset(parent, name, _QUIET)
            if child < 0:
                child = _call("add region", fdt.add_subnode, parent, name)
            # A reused child must be honoured: Linux skips a disabled one, and reusable
            # would hand the range back (of_fdt_device_is_available, reserved-memory.yaml).
            for prop in ("status", "reusable"):
                fdt.delprop(child, prop, _QUIET)
            _call("no-map", fdt.setprop, child, "no-map", b"")
            _call("reg", fdt.setprop, child, "reg", _reg(r, ac, sc))
    _call("pack", fdt.pack)
    out = bytes(fdt.as_bytearray())
    check_patched(out, lay)
    return out
