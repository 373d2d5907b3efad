"""Read the few ACPI binary facts ``pvdesc check`` needs: SRAT memory affinity and SSDT claims.

Deliberately minimal and pure ``struct`` decoding of untrusted bytes (the full
iasl/acpiexec wrapper lives elsewhere):

- every table: the 36-byte System Description Table header, ``Length`` within
  the file, and the checksum (all bytes sum to 0 mod 256; ACPI 6.x §5.2.6);
- ``SRAT``: Memory Affinity structures (type 1, 40 bytes: proximity domain,
  base, length, flags bit 0 Enabled, bit 1 Hot Pluggable; ACPI §5.2.16.2).
  Linux skips entries without Enabled (``acpi_numa_memory_affinity_init``,
  docs/acpi.md §1.4), so :attr:`MemoryAffinity.enabled` is kept;
- ``SSDT``/``DSDT``: every static ``Name (_CRS, ResourceTemplate () {...})``
  (AML ``NameOp "_CRS" BufferOp``) is decoded, and attributed to the innermost
  enclosing ``Device`` (``DeviceOp`` 0x5B 0x82).  Memory descriptors read:
  Memory32 (0x85), Memory32Fixed (0x86), DWord (0x87), Word (0x88) and QWord
  (0x8A) address spaces of resource type Memory (ACPI §6.4.3).

Why decode ``_CRS`` ourselves instead of running ``acpiexec -b "resources
\\_SB.PVTM"``: the claim pvdesc emits, and the ones VMMs emit (Cloud Hypervisor's
``_SB_.MBRD``, docs/acpi.md §1.6), are static ``Name`` buffers, which need no AML
interpreter; decoding them in-process is pure, fast, has no subprocess or
timeout to manage, and works where acpica-tools is not installed.  acpiexec
also exits 0 on failed evaluations (docs/acpi.md §4.4), so parsing its output would
need the same care.  The tests cross-check this decoder against acpiexec.  A
``_CRS`` computed by a ``Method`` is not evaluated (the check says so).
"""

from __future__ import annotations

import heapq
import struct
from pathlib import Path
from typing import NamedTuple

from pvdesc.core.ranges import Range
from pvdesc.errors import AcpiError
from pvdesc.tools.inputs import display_name, read_bounded, too_big

#: A real SRAT/SSDT is a few KiB; refuse anything bigger than this.
MAX_TABLE_BYTES = 4 << 20
#: ``Device`` scopes or ``_CRS`` buffers in one table (a large server DSDT has a few thousand).
MAX_SCOPES = 65_536
#: Resource descriptors decoded in one table, over all ``_CRS`` buffers (they may overlap).
MAX_DESCRIPTORS = 1_000_000
HEADER = struct.Struct("<4sIBB6s8sI4sI")
HEADER_SIZE = HEADER.size  # 36
#: SRAT: header, then 4 bytes "table revision" (1) and 8 reserved (ACPI §5.2.16).
SRAT_ENTRIES_OFFSET = HEADER_SIZE + 12
SRAT_MEMORY_AFFINITY = 1
SRAT_MEMORY_AFFINITY_LEN = 40
SRAT_ENABLED = 1 << 0
SRAT_HOTPLUGGABLE = 1 << 1

_NAME_CRS_BUFFER = b"\x08_CRS\x11"
_DEVICE_OP = b"\x5b\x82"


class MemoryAffinity(NamedTuple):
    """One SRAT Memory Affinity structure.

    Attributes:
        index: position among all SRAT structures (0-based).
        proximity_domain: the NUMA proximity domain.
        range: base and length.
        enabled: flags bit 0; Linux ignores disabled entries.
        hotpluggable: flags bit 1.
    """

    index: int  # type: ignore[assignment]  # shadows tuple.index, which no caller uses
    proximity_domain: int
    range: Range
    enabled: bool
    hotpluggable: bool


class Claim(NamedTuple):
    """A memory range claimed by a static ``_CRS``.

    Attributes:
        device: the enclosing ``Device`` name as written (``\\_SB.PVTM``, ``PVTM``),
            or ``""`` when the ``_CRS`` is not inside a Device.
        index: the descriptor's position in that ``_CRS``.
        range: the claimed range.
    """

    device: str
    index: int  # type: ignore[assignment]  # shadows tuple.index, which no caller uses
    range: Range


class AcpiTable(NamedTuple):
    """One ACPI table as far as ``pvdesc check`` cares.

    Attributes:
        file: where it was read from.
        signature: ``SRAT``, ``SSDT``, ``DSDT``, ...
        oem_table_id: the header's OEM Table ID (trailing spaces stripped).
        memory_affinity: SRAT Memory Affinity structures (empty for other tables).
        claims: static ``_CRS`` memory claims (SSDT/DSDT only).
    """

    file: str
    signature: str
    oem_table_id: str
    memory_affinity: tuple[MemoryAffinity, ...]
    claims: tuple[Claim, ...]

    def source(self, what: str) -> str:
        """``srat.aml SRAT entry[2]``: how findings name a part of this table."""
        return f"{self.file} {self.signature} {what}"


def _pkg_length(data: bytes, pos: int) -> tuple[int, int]:
    """(PkgLength value, bytes it occupies) at ``pos`` (ACPI §20.2.4)."""
    lead = data[pos]
    follow = lead >> 6
    if follow == 0:
        return lead & 0x3F, 1
    if pos + follow >= len(data):
        raise IndexError("PkgLength past the end")
    value = lead & 0x0F
    for i in range(follow):
        value |= data[pos + 1 + i] << (4 + 8 * i)
    return value, 1 + follow


def _name_string(data: bytes, pos: int) -> str:
    """A NameString at ``pos`` as text (prefixes and segments), best effort."""
    out = ""
    while pos < len(data) and data[pos] in (0x5C, 0x5E):  # '\\', '^'
        out += chr(data[pos])
        pos += 1
    if pos >= len(data):
        return out
    if data[pos] == 0x2E:  # DualNamePrefix
        count, pos = 2, pos + 1
    elif data[pos] == 0x2F and pos + 1 < len(data):  # MultiNamePrefix
        count, pos = data[pos + 1], pos + 2
    elif data[pos] == 0:
        return out
    else:
        count = 1
    segs = []
    for _ in range(count):
        seg = data[pos : pos + 4]
        if len(seg) < 4 or not all(
            c == 0x5F or 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A for c in seg
        ):
            break
        segs.append(seg.decode("ascii"))
        pos += 4
    return out + ".".join(segs)


def _too_many(what: str, limit: int) -> AcpiError:
    return AcpiError(f"more than {limit} {what}: refusing to decode a table this large")


def _devices(body: bytes) -> list[tuple[int, int, str]]:
    """(start, end, name) of every ``Device`` scope found in ``body``."""
    out: list[tuple[int, int, str]] = []
    pos = body.find(_DEVICE_OP)
    while pos >= 0:
        if len(out) >= MAX_SCOPES:
            raise _too_many("Device scopes", MAX_SCOPES)
        try:
            length, used = _pkg_length(body, pos + 2)
        except IndexError:
            break
        end = pos + 2 + length
        if length > used and end <= len(body):
            out.append((pos, end, _name_string(body, pos + 2 + used)))
        pos = body.find(_DEVICE_OP, pos + 2)
    return out


def _buffer_payload(body: bytes, pos: int) -> bytes | None:
    """The bytes of the Buffer whose BufferOp is at ``pos``, or ``None`` if malformed."""
    try:
        length, used = _pkg_length(body, pos + 1)
    except IndexError:
        return None
    end = pos + 1 + length
    p = pos + 1 + used
    if end > len(body) or p >= end:
        return None
    op = body[p]
    size_bytes = {0x0A: 1, 0x0B: 2, 0x0C: 4, 0x00: 0, 0x01: 0}.get(op)
    if size_bytes is None:
        return None
    return body[p + 1 + size_bytes : end]


def _memory_descriptors(buf: bytes, budget: list[int]) -> list[Range]:
    """Memory ranges in a resource template (small descriptors skipped, stops at End Tag).

    ``budget[0]`` counts down the descriptors the whole table may still decode.
    """
    out: list[Range] = []
    pos = 0
    while pos < len(buf):
        budget[0] -= 1
        if budget[0] < 0:
            raise _too_many("resource descriptors", MAX_DESCRIPTORS)
        tag = buf[pos]
        if not tag & 0x80:
            if (tag >> 3) & 0x0F == 0x0F:  # End Tag
                break
            pos += 1 + (tag & 0x07)
            continue
        if pos + 3 > len(buf):
            break
        (length,) = struct.unpack_from("<H", buf, pos + 1)
        item = buf[pos + 3 : pos + 3 + length]
        if len(item) < length:
            break
        kind = tag & 0x7F
        r: Range | None = None
        if kind == 0x05 and length >= 17:  # Memory32: info, min, max, align, length
            lo, _hi, _align, size = struct.unpack_from("<IIII", item, 1)
            r = Range(lo, size)
        elif kind == 0x06 and length >= 9:  # Memory32Fixed: info, base, length
            base, size = struct.unpack_from("<II", item, 1)
            r = Range(base, size)
        elif kind in (0x07, 0x08, 0x0A) and item and item[0] == 0:  # address space, Memory
            fmt = {0x07: "<IIIII", 0x08: "<HHHHH", 0x0A: "<QQQQQ"}[kind]
            if length >= 3 + struct.calcsize(fmt):
                _gran, lo, hi, _tra, size = struct.unpack_from(fmt, item, 3)
                r = Range(lo, size or hi - lo + 1)
        if r is not None and r.size > 0:
            out.append(r)
        pos += 3 + length
    return out


def _claims(body: bytes) -> tuple[Claim, ...]:
    """Every static ``_CRS`` memory claim, named by its innermost enclosing ``Device``.

    The ``_CRS`` positions come in increasing order, so the enclosing scopes are
    kept in a heap by size (innermost first) and dropped once passed:
    O((d + c) log d) for d scopes and c claims, never d * c.
    """
    devices = sorted(_devices(body))
    out: list[Claim] = []
    scopes: list[tuple[int, int, int]] = []  # (size, end, index into devices)
    entered = 0
    budget = [MAX_DESCRIPTORS]
    found = 0
    pos = body.find(_NAME_CRS_BUFFER)
    while pos >= 0:
        found += 1
        if found > MAX_SCOPES:
            raise _too_many("_CRS buffers", MAX_SCOPES)
        while entered < len(devices) and devices[entered][0] < pos:
            start, end, _ = devices[entered]
            heapq.heappush(scopes, (end - start, end, entered))
            entered += 1
        while scopes and scopes[0][1] <= pos:
            heapq.heappop(scopes)
        payload = _buffer_payload(body, pos + len(_NAME_CRS_BUFFER) - 1)
        if payload is not None:
            name = devices[scopes[0][2]][2] if scopes else ""
            ranges = _memory_descriptors(payload, budget)
            out.extend(Claim(name, i, r) for i, r in enumerate(ranges))
        pos = body.find(_NAME_CRS_BUFFER, pos + 1)
    return tuple(out)


def _srat(data: bytes, file: str) -> tuple[MemoryAffinity, ...]:
    out = []
    pos, index = SRAT_ENTRIES_OFFSET, 0
    while pos + 2 <= len(data):
        kind, length = data[pos], data[pos + 1]
        if length < 2 or pos + length > len(data):
            raise AcpiError(f"SRAT structure {index} at byte {pos} has bad length {length}", file)
        if kind == SRAT_MEMORY_AFFINITY:
            if length != SRAT_MEMORY_AFFINITY_LEN:
                raise AcpiError(
                    f"SRAT structure {index}: Memory Affinity length {length}, must be 40", file
                )
            domain, base, size, flags = struct.unpack_from("<I2xQQ4xI", data, pos + 2)
            out.append(
                MemoryAffinity(
                    index,
                    domain,
                    Range(base, size),
                    bool(flags & SRAT_ENABLED),
                    bool(flags & SRAT_HOTPLUGGABLE),
                )
            )
        pos += length
        index += 1
    return tuple(out)


def parse(data: bytes, file: str = "<acpi>") -> AcpiTable:
    """Check an ACPI table's header and checksum and decode it; :class:`AcpiError` if unusable."""
    if len(data) > MAX_TABLE_BYTES:
        raise AcpiError(too_big(len(data), MAX_TABLE_BYTES, "ACPI tables"), file)
    if len(data) < HEADER_SIZE:
        raise AcpiError(f"truncated: {len(data)} bytes, an ACPI table header is 36", file)
    sig_raw, length, _rev, _csum, _oem, table_id, _orev, _cid, _crev = HEADER.unpack_from(data)
    if not all(0x20 < c < 0x7F for c in sig_raw):
        raise AcpiError(f"not an ACPI table: signature {sig_raw!r}", file)
    signature = sig_raw.decode("ascii")
    if length < HEADER_SIZE or length > len(data):
        raise AcpiError(
            f"{signature}: header Length {length} but the file has {len(data)} bytes", file
        )
    table = data[:length]
    if sum(table) % 256:
        raise AcpiError(
            f"{signature}: checksum wrong (bytes sum to {sum(table) % 256:#04x}, not 0): corrupt",
            file,
        )
    affinity: tuple[MemoryAffinity, ...] = ()
    claims: tuple[Claim, ...] = ()
    if signature == "SRAT":
        affinity = _srat(table, file)
    elif signature in ("SSDT", "DSDT"):
        claims = _claims(table[HEADER_SIZE:])
    oem_table_id = table_id.decode("ascii", "replace").rstrip(" \0")
    return AcpiTable(file, signature, oem_table_id, affinity, claims)


def load(path: str | Path) -> AcpiTable:
    """Read and decode an ACPI table file (refused by size before it is read, see :mod:`inputs`)."""
    return parse(read_bounded(path, MAX_TABLE_BYTES, AcpiError, "ACPI tables"), display_name(path))
