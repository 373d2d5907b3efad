"""Independent oracles for the ACPI tests: a struct-based SRAT parser and a checksum."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pvdesc.description.load import load
from pvdesc.emit import build
from pvdesc.layout import allocate as layout

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

HEADER = struct.Struct("<4sIBB6s8sI4sI")  # ACPI table header, 36 bytes
SRAT_RESERVED = 12  # Table Revision (4) + Reserved (8)
MEMORY_AFFINITY = struct.Struct("<BBIHQQIIQ")  # type 1, length 40
GICC_AFFINITY = struct.Struct("<BBIIII")  # type 3, length 18


@dataclass(frozen=True)
class Header:
    signature: bytes
    length: int
    revision: int
    oem_id: bytes
    oem_table_id: bytes
    oem_revision: int


@dataclass(frozen=True)
class MemAff:
    node: int
    base: int
    size: int
    flags: int


@dataclass(frozen=True)
class GiccAff:
    node: int
    uid: int
    flags: int


def checksum_valid(table: bytes) -> bool:
    return sum(table) & 0xFF == 0


def header(table: bytes) -> Header:
    sig, length, rev, _csum, oem, oem_tab, oem_rev, _cid, _crev = HEADER.unpack_from(table)
    return Header(sig, length, rev, oem, oem_tab, oem_rev)


def parse_srat(table: bytes) -> tuple[Header, list[MemAff], list[GiccAff]]:
    """Walk the SRAT subtables; fail on any type/length this test does not expect."""
    hdr = header(table)
    if hdr.signature != b"SRAT" or hdr.length != len(table):
        raise ValueError(f"not a whole SRAT: {hdr}")
    off = HEADER.size + SRAT_RESERVED
    mem: list[MemAff] = []
    gicc: list[GiccAff] = []
    while off < len(table):
        kind, length = table[off], table[off + 1]
        if kind == 1 and length == MEMORY_AFFINITY.size:
            _, _, node, _, base, size, _, flags, _ = MEMORY_AFFINITY.unpack_from(table, off)
            mem.append(MemAff(node, base, size, flags))
        elif kind == 3 and length == GICC_AFFINITY.size:
            _, _, node, uid, flags, _ = GICC_AFFINITY.unpack_from(table, off)
            gicc.append(GiccAff(node, uid, flags))
        else:
            raise ValueError(f"unexpected subtable type {kind} length {length} at {off:#x}")
        off += length
    if off != len(table):
        raise ValueError("subtables overrun the table")
    return hdr, mem, gicc


def plan_example(name: str) -> build.BuildResult:
    return build.plan(EXAMPLES / f"{name}.yaml")


def layout_of(path: Path) -> layout.Layout:
    return layout.allocate(load(path).description)


def outputs(result: build.BuildResult) -> dict[str, bytes]:
    return {o.name: o.data for o in result.outputs}
