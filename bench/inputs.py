"""Benchmark inputs: the large VM description, a nested DTB, random ranges, a fleet.

``bench/data/large-vm.yaml`` is checked in; regenerate it with
``.venv/bin/python bench/inputs.py`` (it must not change unless this file does).
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import libfdt

from pvdesc.core.ranges import Range

LARGE_VM = Path(__file__).resolve().parent / "data" / "large-vm.yaml"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: RAM starts where QEMU virt's does; every bank is 4 GiB and its own NUMA node.
RAM_BASE = 0x4000_0000
BANK_SIZE = 4 << 30
#: Devices sit below RAM: one 4 KiB window per 64 KiB granule from 256 MiB.
DEVICE_BASE = 0x1000_0000
DEVICE_STRIDE = 0x1_0000


def large_vm_yaml(vcpus: int = 512, banks: int = 16, devices: int = 200) -> str:
    """A description with ``vcpus`` possible vCPUs, ``banks`` NUMA banks and ``devices``.

    Boot uefi-acpi with placement carve, so ``pvdesc build`` writes the DTS/DTB,
    the hypervisor config, the C and Rust headers, and compiles an SSDT and (with
    more than one bank) a SRAT with one GICC Affinity per vCPU with iasl.
    """
    if DEVICE_BASE + devices * DEVICE_STRIDE > RAM_BASE:
        raise ValueError(f"{devices} devices do not fit below RAM")
    lines = [
        f"# Benchmark VM (bench/inputs.py): {vcpus} vCPUs, {banks} NUMA banks, "
        f"{devices} devices, carve/acpi (SSDT + SRAT).",
        f"name: bench-large-{vcpus}cpu",
        f"vcpus: {vcpus}",
        f"max_vcpus: {vcpus}",
        "ipa_bits: 44",
        "boot: uefi-acpi",
        "vmm: generic-kvm",
        "memory:",
    ]
    lines += [
        f"  - {{base: {RAM_BASE + n * BANK_SIZE:#x}, size: 4G, numa_node: {n}}}"
        for n in range(banks)
    ]
    if devices:
        lines.append("devices:")
        lines += [
            f"  - {{name: dev{d}, base: {DEVICE_BASE + d * DEVICE_STRIDE:#x}, size: 4K}}"
            for d in range(devices)
        ]
    lines += [
        "stolen_time:",
        "  placement: carve",
        "acpi:",
        "  oem_id: PVDESC",
        "  oem_table_id: PVBENCH",
        "  oem_revision: 1",
    ]
    return "\n".join(lines) + "\n"


def nested_dtb(buses: int = 100, per_bus: int = 99) -> bytes:
    """Root + memory + ``buses`` simple-buses with ``per_bus`` devices each.

    The defaults give 10,002 nodes: every device ``reg`` is translated through
    its bus's ``ranges``.
    """
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property_u32("#address-cells", 2)
        sw.property_u32("#size-cells", 2)
        with sw.add_node("memory@40000000"):
            sw.property_string("device_type", "memory")
            sw.property("reg", (0x40000000).to_bytes(8, "big") + (1 << 32).to_bytes(8, "big"))
        for b in range(buses):
            base = 0x10000000 + b * 0x100000
            with sw.add_node(f"bus@{base:x}"):
                sw.property_string("compatible", "simple-bus")
                sw.property_u32("#address-cells", 1)
                sw.property_u32("#size-cells", 1)
                window = (
                    (0).to_bytes(4, "big") + base.to_bytes(8, "big") + (0x100000).to_bytes(4, "big")
                )
                sw.property("ranges", window)
                for d in range(per_bus):
                    with sw.add_node(f"dev@{d * 0x1000:x}"):
                        sw.property(
                            "reg", (d * 0x1000).to_bytes(4, "big") + (0x100).to_bytes(4, "big")
                        )
    fdt = sw.as_fdt()
    fdt.pack()
    return bytes(fdt.as_bytearray())


def hostile_yaml(limit: int) -> dict[str, bytes]:
    """Descriptions of at most ``limit`` bytes built to be slow to refuse: name -> bytes.

    The first is a flow list left open (``x: [1,1,1,...`` without ``]``),
    which took 15.6 s and 340 MB to refuse when libyaml built all its 500,000 nodes
    and the pure-Python parser then read it again for a clearer message.
    """
    ram = b"name: vm\nvcpus: 2\nmemory:\n  - {base: 0x40000000, size: 1G}\n"

    def fill(head: bytes, unit: bytes, tail: bytes = b"") -> bytes:
        return head + unit * ((limit - len(head) - len(tail)) // len(unit)) + tail

    return {
        "unclosed_flow_list": fill(b"x: [", b"1,"),
        "closed_flow_list": fill(b"x: [", b"1,", b"1]"),
        # under the node limit, libyaml's error at the very end
        "unclosed_long_items": fill(b"x: [", b"1234567890,"),
        "deep_nesting": fill(b"x: ", b"["),
        # the longest lists the node limit lets through, far past maxItems
        "too_many_banks": b"name: vm\nvcpus: 2\nmemory:\n" + b"  - {base: 0, size: 1}\n" * 19_990,
        "unknown_keys": ram + b"".join(b"k%06d: 1\n" % i for i in range(49_000)),
        "alias_fan_out": fill(ram + b"a: &a [1, 2, 3, 4, 5, 6, 7, 8]\nb: [", b"*a, ", b"*a]"),
    }


def random_ranges(n: int, seed: int = 1) -> list[Range]:
    """``n`` ranges of 1 B..1 MiB at random bases in a 40-bit space (few overlap)."""
    rng = random.Random(seed)
    return [Range(rng.randrange(1 << 40), rng.randrange(1, 1 << 20)) for _ in range(n)]


_NAME_RE = re.compile(r"^name: (?P<name>\S+)$", re.MULTILINE)
_OEM_REVISION_RE = re.compile(r"^  oem_revision: \S+$", re.MULTILINE)


def fleet(dest: Path, n: int, examples: Path = EXAMPLES, *, distinct: bool = False) -> list[Path]:
    """``n`` descriptions in ``dest``: the shipped examples in turn, each copy renamed.

    Copy ``k`` of ``examples/NAME.yaml`` is ``dest/NNNNN-NAME.yaml`` with ``name:
    NAME-k``, so every VM (and every output file name) in the fleet is distinct,
    as in a real CI fleet, and the files sort in the order they were made.  The
    renamed copies of an ACPI example still have byte-identical ACPI tables, which
    ``validate`` checks once per run; with ``distinct`` each copy's tables differ
    too (``acpi.oem_revision`` is the copy's number), so nothing repeats.
    """
    sources = sorted(examples.glob("*.yaml"))
    if not sources:
        raise ValueError(f"no *.yaml in {examples}")
    texts = [src.read_text(encoding="utf-8") for src in sources]
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(n):
        src, text = sources[i % len(sources)], texts[i % len(sources)]
        copy = i // len(sources)
        renamed, count = _NAME_RE.subn(rf"name: \g<name>-{copy}", text, 1)
        if count != 1:
            raise ValueError(f"{src}: no 'name:' line to rename")
        if distinct and "\nacpi:\n" in renamed:
            renamed, count = _OEM_REVISION_RE.subn(f"  oem_revision: {i}", renamed, 1)
            if count != 1:
                raise ValueError(f"{src}: no '  oem_revision:' line under acpi:")
        path = dest / f"{i:05d}-{src.stem}.yaml"
        path.write_text(renamed, encoding="utf-8")
        made.append(path)
    return made


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else LARGE_VM
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(large_vm_yaml())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
