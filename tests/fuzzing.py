"""Fuzz targets, seeds and mutators, shared by test_fuzz.py (short runs) and bench/fuzz.py.

A *target* takes bytes and runs one untrusted-input path of pvdesc the way the
CLI does.  The only acceptable outcomes are:

- an answer that passes the target's own correctness checks (a build's DTB
  passes ``check`` against its hypervisor config, a patched ``--into`` DTB is
  read back safe, ...), or
- a :class:`~pvdesc.errors.PvdescError` whose message is one short clean line
  (the CLI turns it into exit status 2).

Anything else (any other exception, or :class:`WrongAnswer`) is a bug.  The
mutators are hypothesis strategies: byte-level mutations of real DTBs and ACPI
tables, structure-level mutations through libfdt (hostile cells, ``reg``,
``ranges``, deep and wide trees), and hostile YAML (huge numbers, bad tags and
timestamps, aliases, nesting, non-UTF-8 bytes).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import libfdt
import yaml
from hypothesis import strategies as st

from pvdesc.audit import check
from pvdesc.audit.findings import Severity
from pvdesc.commands.map import draw as mapview
from pvdesc.commands.map import model as addrmap
from pvdesc.core.model import Boot
from pvdesc.core.ranges import Range
from pvdesc.description.load import loads
from pvdesc.emit import build, hypervisor, patch
from pvdesc.errors import MAX_MESSAGE_CHARS, PvdescError
from pvdesc.layout import allocate as layout
from pvdesc.read import acpitables, dtb
from pvdesc.tools import proc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
CORPUS = ROOT / "tests" / "data" / "fuzz"
#: QEMU virt's own region (hw/arm/virt.c VIRT_PVTIME), used as a check target.
QEMU_REGION = Range(0x090A0000, 0x10000)
#: Separates the two inputs of the ``diff`` target in one byte string.
DIFF_SEPARATOR = b"\n--- pvdesc-fuzz-new ---\n"


class WrongAnswer(Exception):
    """pvdesc answered, but the answer fails the target's correctness check."""


def clean(err: PvdescError) -> None:
    """A refusal must be a short, non-empty message (the CLI prints it as one line)."""
    text = str(err)
    if not text.strip():
        raise WrongAnswer(f"empty error message from {type(err).__name__}")
    if len(text) > MAX_MESSAGE_CHARS:
        raise WrongAnswer(f"{len(text)}-character error message: {text[:200]}...")


# --------------------------------------------------------------------------- targets


def _check_tree(tree: dtb.DeviceTree) -> None:
    """``pvdesc check`` and ``pvdesc map --dtb`` on a parsed tree, for a few regions and boots."""
    regions = [QEMU_REGION]
    if tree.memory:
        inside = tree.memory[0].range
        regions.append(Range(inside.base - inside.base % 64, 0x10000))
    if tree.devices:
        regions.append(Range(tree.devices[-1].range.base & ~0xFFFF, 0x10000))
    for region in regions:
        for boot in Boot:
            try:
                target = check.target_from_region(f"{region.base:#x}:{region.size:#x}", 8)
            except PvdescError as err:  # e.g. a region past 2^64 taken from the tree
                clean(err)
                continue
            findings = check.check(tree, target, boot)
            doc = json.loads(check.to_json(findings))
            if doc["verdict"] != ("unsafe" if check.unsafe(findings) else "safe"):
                raise WrongAnswer("verdict disagrees with the findings")
            check.to_text(findings)
            amap = addrmap.build(addrmap.from_dtb(tree, target, boot, findings))
            mapview.render_text(amap)
            mapview.render_svg(amap)


def target_dtb(data: bytes) -> None:
    """``pvdesc check --dtb`` / ``pvdesc map --dtb`` on a hostile DTB."""
    try:
        tree = dtb.parse(data, "fuzz.dtb")
    except PvdescError as err:
        clean(err)
        return
    _check_tree(tree)


@cache
def _qemu_virt_layout() -> layout.Layout:
    return build.plan(ROOT / "examples" / "qemu-virt.yaml").layout


@cache
def _carve_layout() -> layout.Layout:
    return build.plan(ROOT / "examples" / "linux-carve-reserved.yaml").layout


def _target_of(lay: layout.Layout) -> check.Target:
    return check.target_from_config(hypervisor.dumps(lay).encode(), "fuzz.hypervisor.json")


def target_into(data: bytes) -> None:
    """``pvdesc build --into`` on a hostile base DTB.

    When the patch succeeds, the result must be a valid DTB that ``check`` finds
    safe for the layout (patch refused every collision it could see).
    """
    for lay in (_qemu_virt_layout(), _carve_layout()):
        try:
            out = patch.patch_dtb(data, lay)
        except PvdescError as err:
            clean(err)
            continue
        try:
            tree = dtb.parse(out, "patched.dtb")
        except PvdescError as err:
            raise WrongAnswer(f"--into produced a DTB pvdesc cannot read: {err}") from None
        findings = check.check(tree, _target_of(lay), lay.description.boot)
        errors = [f for f in findings if f.severity is Severity.ERROR]
        if errors:
            raise WrongAnswer(f"--into accepted a base that check finds unsafe: {errors[0]}")


def target_yaml(data: bytes) -> None:
    """``pvdesc build`` on a hostile description, then ``check`` on what it wrote.

    Any accepted description must give a DTB (and ACPI tables) that ``pvdesc
    check`` finds safe against its own hypervisor config.
    """
    try:
        loaded = loads(data, "fuzz.yaml")
        lay = layout.allocate(loaded.description)
        outputs = build.render_outputs(loaded, lay)
    except PvdescError as err:
        clean(err)
        return
    by_kind = {o.kind: o.data for o in outputs}
    tree = dtb.parse(by_kind["dtb"], "built.dtb")
    target = check.target_from_config(by_kind["hypervisor-config"], "built.hypervisor.json")
    tables = [acpitables.parse(by_kind[k], k) for k in ("ssdt-aml", "srat-aml") if k in by_kind]
    findings = check.check(tree, target, lay.description.boot, tables)
    if check.unsafe(findings):
        bad = next(f for f in findings if f.severity is Severity.ERROR)
        raise WrongAnswer(f"build accepted a description whose outputs check unsafe: {bad}")
    mapview.render_text(addrmap.build(addrmap.from_layout(lay)))


@cache
def _reference_tree() -> dtb.DeviceTree:
    blob = next(o.data for o in build.plan(EXAMPLES[0]).outputs if o.kind == "dtb")
    return dtb.parse(blob, "reference.dtb")


def target_config(data: bytes) -> None:
    """``pvdesc check --hypervisor-config`` on a hostile config."""
    try:
        target = check.target_from_config(data, "fuzz.hypervisor.json")
    except PvdescError as err:
        clean(err)
        return
    for boot in Boot:
        check.to_json(check.check(_reference_tree(), target, boot))


def target_acpi(data: bytes) -> None:
    """``pvdesc check --acpi`` on a hostile ACPI table."""
    try:
        table = acpitables.parse(data, "fuzz.aml")
    except PvdescError as err:
        clean(err)
        return
    target = check.target_from_region(f"{QEMU_REGION.base:#x}:{QEMU_REGION.size:#x}", 8)
    check.to_text(check.check(_reference_tree(), target, Boot.UEFI_ACPI, [table]))


def target_diff(data: bytes) -> None:
    """``pvdesc diff OLD NEW`` on two hostile inputs (joined by :data:`DIFF_SEPARATOR`).

    Every side that loads must be compatible with itself, unless it states a
    revision or stride KVM does not implement (then nothing is compatible with it).
    """
    from pvdesc import kvm
    from pvdesc.audit import diff

    old_bytes, _, new_bytes = data.partition(DIFF_SEPARATOR)
    sides = []
    for name, part in (("old", old_bytes), ("new", new_bytes)):
        source = f"{name}.hypervisor.json" if part.lstrip()[:1] == b"{" else f"{name}.yaml"
        try:
            side = diff.side_from_bytes(part, source)
        except PvdescError as err:
            clean(err)
            continue
        valid = (side.revision, side.stride) == (kvm.PVTIME_REVISION, kvm.PVTIME_STRUCT_SIZE)
        if diff.compatible(diff.compare(side, side)) != valid:
            raise WrongAnswer(f"{source}: compatible with itself is not {valid}")
        sides.append(side)
    if len(sides) == 2:
        findings = diff.compare(sides[0], sides[1])
        json.loads(diff.to_json(findings))
        diff.to_text(findings, sides[0], sides[1])


TARGETS: dict[str, Callable[[bytes], None]] = {
    "dtb": target_dtb,
    "into": target_into,
    "yaml": target_yaml,
    "config": target_config,
    "acpi": target_acpi,
    "diff": target_diff,
}


# --------------------------------------------------------------------------- seeds


def _run(argv: Sequence[str]) -> None:
    exe = proc.program(argv[0], "scripts/setup --test installs it")
    subprocess.run([exe, *argv[1:]], check=True, capture_output=True, timeout=120)


#: Hand-written trees for what pvdesc's own outputs never contain.
DTS_SEEDS = {
    "bus": """/dts-v1/;
/memreserve/ 0x48000000 0x10000;
/ { #address-cells = <2>; #size-cells = <2>;
  memory@40000000 { device_type = "memory"; reg = <0 0x40000000 0 0x40000000>; };
  reserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;
    pv@7fff0000 { reg = <0 0x7fff0000 0 0x10000>; no-map; };
    cma@70000000 { reg = <0 0x70000000 0 0x1000000>; reusable; }; };
  soc { compatible = "simple-bus"; #address-cells = <1>; #size-cells = <1>;
    ranges = <0 0 0x09000000 0x100000 0x100000 0 0x0a000000 0x10000>;
    uart@1000 { reg = <0x1000 0x1000 0x2000 0x100>; };
    inner { #address-cells = <1>; #size-cells = <1>; ranges;
      dev@100000 { reg = <0x100000 0x100>; }; }; };
  cpus { #address-cells = <1>; #size-cells = <0>; cpu@0 { reg = <0>; }; };
  i2c { #address-cells = <1>; #size-cells = <0>; eeprom@50 { reg = <0x50>; }; };
};
""",
    "pci": """/dts-v1/;
/ { #address-cells = <2>; #size-cells = <2>;
  memory@80000000 { device_type = "memory"; reg = <0 0x80000000 0 0x80000000>, <1 0 0 0x1000000>; };
  pcie@10000000 { device_type = "pci"; #address-cells = <3>; #size-cells = <2>;
    reg = <0 0x3f000000 0 0x1000000>;
    ranges = <0x1000000 0 0 0 0x3eff0000 0 0x10000>,
             <0x2000000 0 0x10000000 0 0x10000000 0 0x2eff0000>; };
};
""",
    "cells1": """/dts-v1/;
/ { #address-cells = <1>; #size-cells = <1>;
  memory@40000000 { device_type = "memory"; reg = <0x40000000 0x20000000>; };
  reserved-memory { #address-cells = <1>; #size-cells = <1>;
    r@50000000 { reg = <0x50000000 0x10000>; no-map; }; };
  uart@9000000 { reg = <0x9000000 0x1000>; };
};
""",
}


def dtc_seeds(workdir: Path) -> list[bytes]:
    """:data:`DTS_SEEDS` compiled with dtc."""
    out = []
    for name, text in DTS_SEEDS.items():
        src, dst = workdir / f"{name}.dts", workdir / f"{name}.dtb"
        src.write_text(text)
        _run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(dst), str(src)])
        out.append(dst.read_bytes())
    return out


def qemu_seeds(workdir: Path) -> list[bytes]:
    """QEMU virt's own DTBs (``-machine virt,dumpdtb=``): one plain, one NUMA with 4 vCPUs."""
    variants = {
        "virt": ["-machine", "virt", "-m", "1G"],
        "virt-numa": [
            "-machine", "virt,gic-version=3", "-smp", "4", "-m", "2G",
            "-object", "memory-backend-ram,id=m0,size=1G",
            "-object", "memory-backend-ram,id=m1,size=1G",
            "-numa", "node,memdev=m0,cpus=0-1", "-numa", "node,memdev=m1,cpus=2-3",
        ],
    }  # fmt: skip
    out = []
    for name, args in variants.items():
        dst = workdir / f"{name}.dtb"
        args = [*args]
        args[1] += f",dumpdtb={dst}"
        _run(["qemu-system-aarch64", *args, "-cpu", "max", "-nographic", "-net", "none"])
        out.append(dst.read_bytes())
    return out


@cache
def pvdesc_outputs(kind: str) -> list[bytes]:
    """Every shipped example's output of one kind (``dtb``, ``ssdt-aml``, ...)."""
    out = []
    for example in EXAMPLES:
        out += [o.data for o in build.plan(example).outputs if o.kind == kind]
    return out


@cache
def yaml_seeds() -> list[bytes]:
    """The shipped examples and every refused description in tests/data/bad/."""
    bad = sorted((ROOT / "tests" / "data" / "bad").glob("*.yaml"))
    return [p.read_bytes() for p in [*EXAMPLES, *bad]]


def config_seeds() -> list[bytes]:
    return pvdesc_outputs("hypervisor-config")


def acpi_seeds() -> list[bytes]:
    return pvdesc_outputs("ssdt-aml") + pvdesc_outputs("srat-aml")


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
