"""Fuzz targets and their seeds, shared by test_fuzz.py (short runs) and bench/fuzz.py.

A *target* takes bytes and runs one untrusted-input path of pvdesc the way the
CLI does.  The only acceptable outcomes are:

- an answer that passes the target's own correctness checks (a build's DTB
  passes ``check`` against its hypervisor config, a patched ``--into`` DTB is
  read back safe, ...), or
- a :class:`~pvdesc.errors.PvdescError` whose message is one short clean line
  (the CLI turns it into exit status 2).

Anything else (any other exception, or :class:`WrongAnswer`) is a bug.  The
mutators that turn the seeds into hostile inputs are in :mod:`mutators`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

from pvdesc.audit import check
from pvdesc.commands.map import draw, rows, sources, terminal
from pvdesc.core.findings import Severity
from pvdesc.core.model import Boot, Target
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
            amap = rows.build(sources.dtb_source(tree, target, boot, findings))
            terminal.render_text(amap)
            draw.render_svg(amap)


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


def _target_of(lay: layout.Layout) -> Target:
    return hypervisor.target_from_config(hypervisor.dumps(lay).encode(), "fuzz.hypervisor.json")


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
    target = hypervisor.target_from_config(by_kind["hypervisor-config"], "built.hypervisor.json")
    tables = [acpitables.parse(by_kind[k], k) for k in ("ssdt-aml", "srat-aml") if k in by_kind]
    findings = check.check(tree, target, lay.description.boot, tables)
    if check.unsafe(findings):
        bad = next(f for f in findings if f.severity is Severity.ERROR)
        raise WrongAnswer(f"build accepted a description whose outputs check unsafe: {bad}")
    terminal.render_text(rows.build(sources.layout_source(lay)))


@cache
def _reference_tree() -> dtb.DeviceTree:
    blob = next(o.data for o in build.plan(EXAMPLES[0]).outputs if o.kind == "dtb")
    return dtb.parse(blob, "reference.dtb")


def target_config(data: bytes) -> None:
    """``pvdesc check --hypervisor-config`` on a hostile config."""
    try:
        target = hypervisor.target_from_config(data, "fuzz.hypervisor.json")
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
    from pvdesc.audit.sides import side_from_bytes

    old_bytes, _, new_bytes = data.partition(DIFF_SEPARATOR)
    sides = []
    for name, part in (("old", old_bytes), ("new", new_bytes)):
        source = f"{name}.hypervisor.json" if part.lstrip()[:1] == b"{" else f"{name}.yaml"
        try:
            side = side_from_bytes(part, source)
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
