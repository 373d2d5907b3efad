"""Patch a VMM's own DTB (``pvdesc build --into BASE``) with libfdt.

The base (e.g. ``qemu-system-aarch64 -machine virt,dumpdtb=base.dtb``) is
validated with ``fdt_check_full`` first.  Then, in order:

1. every node's MMIO windows are collected: ``reg`` decoded with the parent's
   ``#address-cells``/``#size-cells`` (default 2/1, DT spec §2.3.5) and translated
   to CPU addresses through each ancestor's ``ranges`` (empty = identity; a node
   under an ancestor without ``ranges``, or with ``#size-cells = 0`` such as
   ``/cpus``, is not memory-mapped); non-empty ``ranges`` windows count too
   (PCIe MMIO).  ``/memory`` nodes and ``/reserved-memory`` children are not devices;
2. if any window collides with the stolen-time region (shares a 64 KiB granule
   with it; for a region inside VMM system memory, overlaps it) the patch is refused;
3. the root's ``device_type = "memory"`` nodes are replaced by the layout's ``/memory``
   nodes, and ``/reserved-memory`` (root cells, empty ``ranges``) gets or updates the
   layout's ``stolen-time@<base>`` ``no-map`` child.

Everything else is left as it was.  Errors are :class:`~pvdesc.errors.DTError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import libfdt

from pvdesc import profiles
from pvdesc.dt import REGION_NODE, unit_address
from pvdesc.errors import DTError
from pvdesc.layout import Layout
from pvdesc.model import Range

#: Refuse bigger blobs outright (QEMU's dumps are 1 MiB, padded).
MAX_DTB_BYTES = 64 << 20
#: DT spec §2.3.5 defaults when a parent lacks the properties.
DEFAULT_ADDRESS_CELLS = 2
DEFAULT_SIZE_CELLS = 1
_QUIET = (libfdt.NOTFOUND,)


def _num(cells: tuple[int, ...]) -> int:
    value = 0
    for c in cells:
        value = (value << 32) | c
    return value


def _cells_of(fdt: libfdt.Fdt, node: int) -> tuple[int, int]:
    """The ``#address-cells``/``#size-cells`` a node gives its children (2/1 default)."""

    def read(name: str, default: int) -> int:
        prop = fdt.getprop(node, name, _QUIET)
        if not isinstance(prop, libfdt.Property):
            return default
        if len(prop) != 4:
            raise DTError(f"{fdt.get_path(node)}: {name} is not one cell")
        value: int = prop.as_uint32()
        return value

    return read("#address-cells", DEFAULT_ADDRESS_CELLS), read("#size-cells", DEFAULT_SIZE_CELLS)


def _tuples(
    fdt: libfdt.Fdt, node: int, name: str, widths: tuple[int, ...]
) -> list[tuple[int, ...]]:
    prop = fdt.getprop(node, name, _QUIET)
    if not isinstance(prop, libfdt.Property):
        return []
    data = bytes(prop)
    step = 4 * sum(widths)
    if step == 0 or len(data) % step:
        raise DTError(
            f"{fdt.get_path(node)}: {name} is {len(data)} bytes, not a multiple of "
            f"{sum(widths)} cells"
        )
    cells = struct.unpack(f">{len(data) // 4}I", data)
    out: list[tuple[int, ...]] = []
    for i in range(0, len(cells), sum(widths)):
        entry = cells[i : i + sum(widths)]
        fields, pos = [], 0
        for w in widths:
            fields.append(_num(entry[pos : pos + w]))
            pos += w
        out.append(tuple(fields))
    return out


def _is_memory(fdt: libfdt.Fdt, node: int) -> bool:
    prop = fdt.getprop(node, "device_type", _QUIET)
    return isinstance(prop, libfdt.Property) and bytes(prop) == b"memory\0"


def _translate(fdt: libfdt.Fdt, chain: list[int], addr: int, size: int) -> Range | None:
    """Translate an address on the bus of ``chain[-1]``'s children up to the root.

    ``chain`` is root first.  ``None`` when some bus node has no ``ranges`` (not
    memory-mapped) or no ``ranges`` entry covers the window.
    """
    for depth in range(len(chain) - 1, 0, -1):
        node, parent = chain[depth], chain[depth - 1]
        if not isinstance(fdt.getprop(node, "ranges", _QUIET), libfdt.Property):
            return None
        child_ac, child_sc = _cells_of(fdt, node)
        parent_ac, _ = _cells_of(fdt, parent)
        entries = _tuples(fdt, node, "ranges", (child_ac, parent_ac, child_sc))
        if entries:
            for child, par, length in entries:
                if child <= addr and addr + size <= child + length:
                    addr = par + (addr - child)
                    break
            else:
                return None
    return Range(addr, size)


def _windows(fdt: libfdt.Fdt, chain: list[int]) -> Iterator[tuple[str, Range]]:
    parent = chain[-1]
    ac, sc = _cells_of(fdt, parent)
    node = fdt.first_subnode(parent, _QUIET)
    while node >= 0:
        path = fdt.get_path(node)
        skip = (len(chain) == 1 and _is_memory(fdt, node)) or path == "/reserved-memory"
        if not skip:
            if sc > 0:
                for addr, size in _tuples(fdt, node, "reg", (ac, sc)):
                    r = _translate(fdt, chain, addr, size)
                    if r is not None and r.size > 0:
                        yield path, r
            child_ac, child_sc = _cells_of(fdt, node)
            if sc > 0 and child_sc > 0:
                for _c, par, length in _tuples(fdt, node, "ranges", (child_ac, ac, child_sc)):
                    r = _translate(fdt, chain, par, length)
                    if r is not None and r.size > 0:
                        yield f"{path} (ranges)", r
            yield from _windows(fdt, [*chain, node])
        node = fdt.next_subnode(node, _QUIET)


def device_windows(fdt: libfdt.Fdt) -> Iterator[tuple[str, Range]]:
    """Every memory-mapped window in the tree as CPU addresses: (node path, range)."""
    return _windows(fdt, [0])


def open_base(blob: bytes) -> libfdt.Fdt:
    """A validated, writable copy of a base DTB (``fdt_check_full``)."""
    if len(blob) > MAX_DTB_BYTES:
        raise DTError(f"base DTB is larger than {MAX_DTB_BYTES} bytes")
    buf = bytearray(blob)
    err = libfdt.fdt_check_full(buf, len(buf)) if len(buf) >= 40 else -libfdt.TRUNCATED
    if err:
        raise DTError(f"not a valid DTB (libfdt fdt_check_full: {libfdt.fdt_strerror(err)})")
    try:
        return libfdt.Fdt(buf)
    except libfdt.FdtException as exc:
        raise DTError(f"not a valid DTB (libfdt: {exc})") from None


def check_collisions(fdt: libfdt.Fdt, lay: Layout) -> None:
    """Refuse a base whose devices collide with the region."""
    region = lay.region
    inside_system = profiles.profile(lay.description.vmm).system_memory is not None
    zone = region if inside_system else region.granules()
    try:
        windows = list(device_windows(fdt))
    except libfdt.FdtException as exc:
        raise DTError(f"cannot read base DTB: {exc}") from None
    for path, r in windows:
        if r.overlaps(zone):
            verb = "overlaps" if r.overlaps(region) else "shares a 64 KiB granule with"
            raise DTError(f"base DTB node {path} {r} {verb} the stolen-time region {region}")


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
    fdt = open_base(blob)
    check_collisions(fdt, lay)
    ac, sc = _cells_of(fdt, 0)
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
        rac, rsc = _cells_of(fdt, parent)
        if (rac, rsc) != (ac, sc):
            raise DTError(
                f"base /reserved-memory has cells {rac}/{rsc}, not the root's {ac}/{sc} "
                "(Linux ignores such a node)"
            )
        for r in lay.reserved:
            name = f"{REGION_NODE}@{unit_address(r.base)}"
            child = fdt.subnode_offset(parent, name, _QUIET)
            if child < 0:
                child = _call("add region", fdt.add_subnode, parent, name)
            _call("no-map", fdt.setprop, child, "no-map", b"")
            _call("reg", fdt.setprop, child, "reg", _reg(r, ac, sc))
    _call("pack", fdt.pack)
    return bytes(fdt.as_bytearray())
