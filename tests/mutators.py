"""Hypothesis mutators for the fuzz targets of :mod:`fuzzing`, and a raw DTB writer.

Byte-level mutations of real DTBs and ACPI tables, structure-level mutations
through libfdt (hostile cells, ``reg``, ``ranges``, deep and wide trees), hostile
YAML (huge numbers, bad tags and timestamps, aliases, nesting, non-UTF-8 bytes),
and :func:`fdt_blob`, which writes huge hostile trees in one pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import libfdt
import yaml
from hypothesis import strategies as st

# --------------------------------------------------------------------------- byte mutations

INTERESTING_U32 = (
    0, 1, 2, 3, 4, 5, 8, 16, 17, 0x28, 0x38, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000,
    0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF, 0xD00DFEED,
    0x00000001, 0x00000002, 0x00000003, 0x00000009,  # FDT_BEGIN_NODE, END_NODE, PROP, END
)  # fmt: skip
u32s = st.one_of(st.sampled_from(INTERESTING_U32), st.integers(0, 0xFFFFFFFF))

byte_ops = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 24), st.integers(0, 7)),
    st.tuples(st.just("set32"), st.integers(0, 1 << 24), u32s),
    st.tuples(st.just("header"), st.integers(1, 9), u32s),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 24)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 24), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 24), st.integers(1, 64)),
    st.tuples(
        st.just("copy"), st.integers(0, 1 << 24), st.integers(0, 1 << 24), st.integers(1, 256)
    ),
)


def apply_bytes(data: bytes, ops: Sequence[tuple[object, ...]]) -> bytes:
    """Apply byte-level mutations (positions taken modulo the length)."""
    buf = bytearray(data)
    for op in ops:
        kind = op[0]
        args = [a for a in op[1:] if isinstance(a, int)]  # positions, values and sizes
        blobs = [a for a in op[1:] if isinstance(a, bytes)]  # what "insert" inserts
        n = max(len(buf), 1)
        if kind == "flip" and buf:
            buf[args[0] % n] ^= 1 << args[1]
        elif kind == "set32" and len(buf) >= 4:
            pos = (args[0] % n) & ~3
            buf[pos : pos + 4] = args[1].to_bytes(4, "big")
        elif kind == "header" and len(buf) >= 40:
            pos = 4 * args[0]
            buf[pos : pos + 4] = args[1].to_bytes(4, "big")
        elif kind == "truncate":
            del buf[args[0] % n :]
        elif kind == "insert":
            pos = args[0] % n
            buf[pos:pos] = blobs[0]
        elif kind == "delete" and buf:
            pos = args[0] % n
            del buf[pos : pos + args[1]]
        elif kind == "copy" and buf:
            src, dst, size = args[0] % n, args[1] % n, args[2]
            buf[dst:dst] = buf[src : src + size]
    return bytes(buf)


# --------------------------------------------------------------------------- libfdt mutations

PROP_NAMES = (
    "#address-cells", "#size-cells", "reg", "ranges", "device_type", "no-map", "reusable",
    "compatible", "status", "numa-node-id", "dma-ranges", "phandle",
)  # fmt: skip
NODE_NAMES = ("memory@0", "reserved-memory", "bus", "x@1", "memory", "soc", "n")


def _cells(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


prop_values = st.one_of(
    st.lists(u32s, max_size=24).map(_cells),
    st.binary(max_size=48),
    st.sampled_from([b"", b"memory\0", b"okay\0", b"\0", b"memory"]),
)
fdt_ops = st.one_of(
    st.tuples(
        st.just("setprop"), st.integers(0, 1 << 16), st.sampled_from(PROP_NAMES), prop_values
    ),
    st.tuples(st.just("addnode"), st.integers(0, 1 << 16), st.sampled_from(NODE_NAMES)),
    st.tuples(st.just("delnode"), st.integers(1, 1 << 16)),
    st.tuples(st.just("delprop"), st.integers(0, 1 << 16), st.sampled_from(PROP_NAMES)),
    st.tuples(st.just("deep"), st.integers(0, 1 << 16), st.integers(1, 200)),
    st.tuples(st.just("wide"), st.integers(0, 1 << 16), st.integers(1, 300), prop_values),
    st.tuples(st.just("memrsv"), st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1)),
)


def _nodes(fdt: libfdt.Fdt) -> list[int]:
    out, off, depth = [], 0, 0
    while off >= 0 and depth >= 0:
        out.append(off)
        off, depth = fdt.next_node(off, depth, (libfdt.NOTFOUND,))
    return out


def apply_fdt(data: bytes, ops: Sequence[tuple[object, ...]]) -> bytes:
    """Apply structure-level mutations through libfdt (an op libfdt refuses is skipped).

    Only a blob that passes ``fdt_check_full`` is edited: libfdt's write functions
    trust the tree they are given and can crash the process on a corrupt one.
    """
    buf = bytearray(data)
    if len(buf) < 40 or libfdt.fdt_check_full(buf, len(buf)) != 0:
        return data
    try:
        fdt = libfdt.Fdt(buf)
    except libfdt.FdtException:
        return data
    for op in ops:
        kind = op[0]
        try:
            fdt.resize(fdt.totalsize() + 65536)
            nodes = _nodes(fdt)
            node = nodes[int(op[1]) % len(nodes)] if kind != "memrsv" else 0  # type: ignore[call-overload]
            if kind == "setprop":
                fdt.setprop(node, str(op[2]), bytes(op[3]))  # type: ignore[call-overload]
            elif kind == "addnode":
                fdt.add_subnode(node, str(op[2]))
            elif kind == "delnode" and node != 0:
                fdt.del_node(node)
            elif kind == "delprop":
                fdt.delprop(node, str(op[2]), (libfdt.NOTFOUND,))
            elif kind == "deep":
                fdt.resize(fdt.totalsize() + 64 * int(op[2]))  # type: ignore[call-overload]
                for i in range(int(op[2])):  # type: ignore[call-overload]
                    node = fdt.add_subnode(node, f"d{i}")
            elif kind == "wide":
                count = int(op[2])  # type: ignore[call-overload]
                fdt.resize(fdt.totalsize() + (96 + len(bytes(op[3]))) * count)  # type: ignore[call-overload]
                for i in range(count):
                    child = fdt.add_subnode(node, f"w@{i:x}")
                    fdt.setprop(child, "reg", bytes(op[3]))  # type: ignore[call-overload]
            elif kind == "memrsv":
                libfdt.fdt_add_mem_rsv(fdt._fdt, int(op[1]), int(op[2]))  # type: ignore[call-overload]
        except libfdt.FdtException:
            continue
    fdt.pack()
    return bytes(fdt.as_bytearray())


# --------------------------------------------------------------------------- YAML

HOSTILE_VALUES = (
    str(10**400), str(2**64), str(2**64 - 1), "-1", "0x1" + "0" * 16, "0x" + "f" * 40,
    "9" * 5000, '"' + "9" * 30 + '"', '"4K\\n"', '"0x10000\\n"', "!!int abc", "!!float x",
    "2001-02-30", "2001-13-45", "2001-12-14t21:59:43.10-05:00", "*nowhere", "&a x",
    "!!binary ///", "!!binary aGVsbG8=", "!!python/object:os.system x", "!!set {a, b}",
    "!!omap [{a: 1}]", "!!timestamp x", "~", ".inf", "-.inf", ".nan", "0b101", "0o777",
    "1_000", "190:20:30", "yes", "off", "'\\x00'", '"\\u2028"', '"a\\nb"', '"\\x85"', "[", "{",
    "[1, [2, [3]]]", "{base: 1}", "''", '"x\\u0000"', "!!str 5", "!!null ''", "? a",
    "|\n  multi\n  line", "2.0", "1.", "40.0", "1.0e+3",
    "0x40000000", "1G", "64K", "512", "513", "0", "1", "52", "53",
    "fixed", "carve", "hole", "acpi", "uefi-acpi", "reserved-memory", "qemu-virt",
    "firecracker", "cloud-hypervisor", "kvmtool", "crosvm",
)  # fmt: skip
KEYS = (
    "name", "vcpus", "max_vcpus", "ipa_bits", "boot", "vmm", "memory", "devices", "stolen_time",
    "placement", "base", "describe", "size", "numa_node", "acpi", "oem_id", "oem_table_id",
    "oem_revision", "<<", "nme", "", "a\nb",
)  # fmt: skip


def _set_value(text: str, line_no: int, value: str) -> str:
    lines = text.split("\n")
    candidates = [i for i, ln in enumerate(lines) if ":" in ln and not ln.lstrip().startswith("#")]
    if not candidates:
        return text
    i = candidates[line_no % len(candidates)]
    ln = lines[i]
    # Replace the value after the last "key:" on the line (flow mappings have several).
    head, _, tail = ln.rpartition(": ")
    if not head:
        head, _, tail = ln.partition(":")
        lines[i] = f"{head}: {value}"
    else:
        rest = "}" if tail.rstrip().endswith("}") else ""
        lines[i] = f"{head}: {value}{rest}"
    return "\n".join(lines)


yaml_ops = st.one_of(
    st.tuples(st.just("value"), st.integers(0, 1000), st.sampled_from(HOSTILE_VALUES)),
    st.tuples(
        st.just("line"),
        st.integers(0, 1000),
        st.sampled_from(KEYS),
        st.sampled_from(HOSTILE_VALUES),
    ),
    st.tuples(st.just("bytes"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("nest"), st.integers(0, 1000), st.sampled_from([1, 5, 50, 400, 2000])),
    st.tuples(st.just("bomb"), st.integers(2, 9), st.integers(2, 10)),
    st.tuples(st.just("bank"), st.sampled_from([1, 2, 7, 100, 1024, 1025])),
    st.tuples(st.just("delete"), st.integers(0, 1000)),
)


def apply_yaml(data: bytes, ops: Sequence[tuple[object, ...]]) -> bytes:
    """Apply description mutations: hostile values and lines, raw bytes, nesting, alias bombs."""
    text = data.decode("utf-8", "replace")
    raw: list[tuple[int, bytes]] = []
    for op in ops:
        kind = op[0]
        if kind == "value":
            text = _set_value(text, int(op[1]), str(op[2]))  # type: ignore[call-overload]
        elif kind == "line":
            lines = text.split("\n")
            pos = int(op[1]) % (len(lines) + 1)  # type: ignore[call-overload]
            lines.insert(pos, f"{json.dumps(str(op[2]))}: {op[3]}")
            text = "\n".join(lines)
        elif kind == "bytes":
            raw.append((int(op[1]), bytes(op[2])))  # type: ignore[call-overload]
        elif kind == "nest":
            depth = int(op[2])  # type: ignore[call-overload]
            text = _set_value(text, int(op[1]), "[" * depth + "]" * depth)  # type: ignore[call-overload]
        elif kind == "bomb":
            levels, width = int(op[1]), int(op[2])  # type: ignore[call-overload]
            lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
            for i in range(1, levels):
                lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
            text = text + "\n" + "\n".join(lines) + "\n"
        elif kind == "bank":
            count = int(op[1])  # type: ignore[call-overload]
            banks = "".join(
                f"  - {{base: {0x40000000 + i * 0x10000:#x}, size: 64K}}\n" for i in range(count)
            )
            text = text.replace("memory:\n", "memory:\n" + banks, 1)
        elif kind == "delete":
            lines = text.split("\n")
            if lines:
                del lines[int(op[1]) % len(lines)]  # type: ignore[call-overload]
            text = "\n".join(lines)
    out = bytearray(text.encode("utf-8", "surrogateescape"))
    for pos, chunk in raw:
        p = pos % (len(out) + 1)
        out[p:p] = chunk
    return bytes(out)


#: Random YAML documents: any structure, with the description's keys to get past the schema.
yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(HOSTILE_VALUES),
)  # fmt: skip
yaml_trees = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=6),
    ),
    max_leaves=30,
)


def dump_yaml(tree: object, flow: bool | None) -> bytes:
    """A random document as YAML text (``safe_dump``; the style varies)."""
    text: str = yaml.safe_dump(tree, default_flow_style=flow, allow_unicode=True)
    return text.encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- raw DTBs

#: A node for :func:`fdt_blob`: (name, [(property, value)], [children]).
Node = tuple[str, list[tuple[str, bytes]], list["Node"]]


def fdt_blob(root: Node, memreserve: Sequence[tuple[int, int]] = ()) -> bytes:
    """Serialise a tree as a version-17 DTB directly (fast for huge hostile trees).

    libfdt's sequential writer grows its buffer a little at a time, which makes
    multi-megabyte test inputs take minutes; this writes the format (DT spec §5)
    in one pass.  Nodes are walked with an explicit stack, so depth is unlimited.
    """
    strings: dict[str, int] = {}
    table = bytearray()
    struct_ = bytearray()

    def name_off(name: str) -> int:
        if name not in strings:
            strings[name] = len(table)
            table.extend(name.encode() + b"\0")
        return strings[name]

    def pad() -> None:
        struct_.extend(b"\0" * (-len(struct_) % 4))

    stack: list[Node | None] = [root]
    while stack:
        node = stack.pop()
        if node is None:
            struct_.extend((2).to_bytes(4, "big"))
            continue
        name, props, children = node
        struct_.extend((1).to_bytes(4, "big") + name.encode() + b"\0")
        pad()
        for prop, value in props:
            struct_.extend((3).to_bytes(4, "big") + len(value).to_bytes(4, "big"))
            struct_.extend(name_off(prop).to_bytes(4, "big") + value)
            pad()
        stack.append(None)
        stack.extend(reversed(children))
    struct_.extend((9).to_bytes(4, "big"))
    rsv = b"".join(a.to_bytes(8, "big") + s.to_bytes(8, "big") for a, s in memreserve)
    rsv += bytes(16)
    off_rsv = 40
    off_struct = off_rsv + len(rsv)
    off_strings = off_struct + len(struct_)
    total = off_strings + len(table)
    header = b"".join(
        v.to_bytes(4, "big")
        for v in (0xD00DFEED, total, off_struct, off_strings, off_rsv, 17, 16, 0, len(table),
                  len(struct_))
    )  # fmt: skip
    return header + rsv + bytes(struct_) + bytes(table)


def u32(*values: int) -> bytes:
    """Cells, big-endian."""
    return b"".join(v.to_bytes(4, "big") for v in values)
