"""Read what a booted guest printed on its serial console: ``/proc/iomem``, the UEFI
memory map, the devicetree memory dump and the kernel log.

The guest's ``/init`` (``templates/guest-init.sh.j2``) prints ``cat /proc/iomem`` and
``od`` hex dumps of ``/sys/firmware/devicetree/base/{memory*,reserved-memory/*}``
between marker lines; everything else on the console is the kernel log (with
``efi=debug``, the UEFI memory map, drivers/firmware/efi/efi.c ``efi_print_memmap``).
The Linux guest under KVM writes the same facts to ``/dev/kmsg`` as tagged lines
(:func:`tagged`).  This is the one parser of that output; the judges only read the
values it returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from pvdesc.core.ranges import Labelled, Range
from pvdesc.errors import ToolError
from pvdesc.tools import qemu

#: Printed by the guest's /init around ``cat /proc/iomem``.
IOMEM_BEGIN = "PVDESC-IOMEM-BEGIN"
IOMEM_END = "PVDESC-IOMEM-END"
#: Printed around the guest's devicetree memory properties (``od`` hex dumps of
#: ``/sys/firmware/devicetree/base/{memory*,reserved-memory/*}``).
DT_BEGIN = "PVDESC-DT-BEGIN"
DT_END = "PVDESC-DT-END"

_IOMEM_RE = re.compile(
    r"^(?P<indent>\s*)(?P<lo>[0-9a-fA-F]+)-(?P<hi>[0-9a-fA-F]+)\s*:\s*(?P<name>.*)$"
)
_EFI_RE = re.compile(r"efi:\s+0x(?P<lo>[0-9a-f]+)-0x(?P<hi>[0-9a-f]+) \[(?P<kind>[^|\]]+)\|")
_RANGE_RE = re.compile(
    r"(?:0x)?(?P<lo>[0-9a-fA-F]{8,16})\s*(?:-|\.\.)\s*(?:0x)?(?P<hi>[0-9a-fA-F]{8,16})\b"
)
_KERNEL_LINE_RE = re.compile(r"^\[\s*\d+\.\d+\] ")
_DT_RE = re.compile(r"^(?P<path>[^\s:][^:]*):(?P<hex>(?: [0-9a-f]{2})*)\s*$")


class IomemEntry(NamedTuple):
    """One ``/proc/iomem`` line.

    Attributes:
        range: the address range (``lo-hi`` inclusive in the file).
        name: the resource name (``System RAM``, ``pnp 00:01``, ``reserved``, ...).
        depth: nesting level (two spaces of indentation per level).
    """

    range: Range
    name: str
    depth: int


class EfiRegion(NamedTuple):
    """One UEFI memory map entry as ``efi=debug`` printed it.

    Attributes:
        range: the range.
        kind: the memory type (``Conventional``, ``Boot Data``, ``MMIO``, ...).
        line: the log line.
    """

    range: Range
    kind: str
    line: str


class DtReservation(NamedTuple):
    """A ``/reserved-memory`` child in the DT the guest saw.

    Attributes:
        node: the child's name (``stolen-time@bfff0000``).
        range: its decoded ``reg``.
        no_map: whether ``no-map`` is present.
    """

    node: str
    range: Range
    no_map: bool


class GuestDt(NamedTuple):
    """The memory facts of the devicetree the guest kernel saw (``/sys/firmware/devicetree``).

    Attributes:
        memory: ``/memory`` ``reg`` entries, labelled with their node name
            (``memory@40000000``) and ``numa-node-id`` (none under UEFI ACPI: the EFI
            stub drops them).
        reserved: ``/reserved-memory`` children with a ``reg``.
        lines: the raw lines the guest printed.
    """

    memory: tuple[Labelled, ...]
    reserved: tuple[DtReservation, ...]
    lines: tuple[str, ...]


def tagged(console: Iterable[str], tag: str) -> dict[str, list[str]]:
    """The kernel-log lines a guest's init wrote to ``/dev/kmsg`` as ``TAGKIND: text``, by KIND.

    Each line is ``[ seconds] TAGKIND: text`` (the kernel's timestamp first).
    """
    line_re = re.compile(rf"^\[\s*\d+\.\d+\] {re.escape(tag)}(?P<kind>\w+): ?(?P<text>.*)$")
    out: dict[str, list[str]] = {}
    for line in console:
        m = line_re.match(line)
        if m is not None:
            out.setdefault(m["kind"], []).append(m["text"])
    return out


def steal_ticks(stat: Iterable[str]) -> dict[int, int]:
    """Each CPU's steal from ``/proc/stat`` lines: the 8th value of ``cpuN`` (USER_HZ ticks)."""
    out = {}
    for line in stat:
        f = line.split()
        if len(f) > 8 and f[0].startswith("cpu") and f[0][3:].isdigit():
            out[int(f[0][3:])] = int(f[8])
    return out


def section(serial: str, begin: str, end: str) -> str | None:
    """The text between the ``begin`` and ``end`` marker lines of a serial log, or ``None``."""
    text = serial.replace("\r\n", "\n")
    start = text.find(begin + "\n")
    stop = text.find(end, start + 1)
    if start < 0 or stop < 0:
        return None
    return text[start + len(begin) + 1 : stop]


def iomem_text(serial: str) -> str:
    """The ``/proc/iomem`` text between the markers in a serial log."""
    text = section(serial, IOMEM_BEGIN, IOMEM_END)
    if text is None:
        raise ToolError(
            f"guest printed no /proc/iomem; last line: {qemu.last_line(serial)}", qemu.QEMU
        )
    return text


def parse_iomem(text: str) -> tuple[IomemEntry, ...]:
    """Parse ``/proc/iomem`` (``lo-hi : name`` lines, two spaces per nesting level)."""
    out = []
    for line in text.splitlines():
        m = _IOMEM_RE.match(line)
        if m is None:
            continue
        lo, hi = int(m["lo"], 16), int(m["hi"], 16)
        out.append(IomemEntry(Range(lo, hi - lo + 1), m["name"].strip(), len(m["indent"]) // 2))
    return tuple(out)


def iomem_line(entry: IomemEntry) -> str:
    """An entry as ``/proc/iomem`` prints it (``%0*llx``, width 8, two spaces per level)."""
    r = entry.range
    return f"{'  ' * entry.depth}{r.base:08x}-{r.last:08x} : {entry.name}"


def log_lines(serial: str) -> tuple[str, ...]:
    """The kernel log: serial lines outside the ``/init`` marker sections, and timestamped
    kernel lines that the console interleaved into them."""
    out: list[str] = []
    skip_until: str | None = None
    ends = {IOMEM_BEGIN: IOMEM_END, DT_BEGIN: DT_END}
    for raw in serial.replace("\r\n", "\n").split("\n"):
        line = raw.rstrip()
        if skip_until is not None:
            if line == skip_until:
                skip_until = None
            elif _KERNEL_LINE_RE.match(line):
                out.append(line)
            continue
        if line in ends:
            skip_until = ends[line]
            continue
        if line:
            out.append(line)
    return tuple(out)


def efi_map(lines: Iterable[str]) -> tuple[EfiRegion, ...]:
    """The UEFI memory map from ``efi=debug`` lines (``efi:   0xLO-0xHI [Type|...]``)."""
    out = []
    for line in lines:
        m = _EFI_RE.search(line)
        if m is not None:
            lo, hi = int(m["lo"], 16), int(m["hi"], 16)
            out.append(EfiRegion(Range(lo, hi - lo + 1), m["kind"].strip(), line))
    return tuple(out)


def log_ranges(lines: Iterable[str]) -> list[tuple[Range, str]]:
    """Every ``lo-hi`` / ``lo..hi`` address range a log line names, with the line."""
    out = []
    for line in lines:
        for m in _RANGE_RE.finditer(line):
            lo, hi = int(m["lo"], 16), int(m["hi"], 16)
            if hi >= lo:
                out.append((Range(lo, hi - lo + 1), line))
    return out


def _int(hex_bytes: str) -> int:
    data = hex_bytes.split()
    return int("".join(data), 16) if data else 0


def guest_devicetree(serial: str) -> GuestDt:
    """Decode the DT lines the guest's ``/init`` printed between the markers of a serial log."""
    return parse_devicetree(section(serial, DT_BEGIN, DT_END) or "")


def parse_devicetree(text: str) -> GuestDt:
    """Decode DT property lines as the guest's init prints them (``path: hex bytes``)."""
    props: dict[str, str] = {}
    lines = []
    for line in text.splitlines():
        m = _DT_RE.match(line.rstrip())
        if m is not None:
            props[m["path"]] = m["hex"]
            lines.append(line.rstrip())
    ac = _int(props.get("#address-cells", "00 00 00 02"))
    sc = _int(props.get("#size-cells", "00 00 00 01"))

    def regs(path: str) -> list[Range]:
        data = props[path].split()
        step = 4 * (ac + sc)
        out = []
        for i in range(0, len(data) - step + 1, step):
            base = _int(" ".join(data[i : i + 4 * ac]))
            size = _int(" ".join(data[i + 4 * ac : i + step]))
            if size:
                out.append(Range(base, size))
        return out

    memory: list[Labelled] = []
    reserved: list[DtReservation] = []
    for path in props:
        node, _, prop = path.rpartition("/")
        if prop != "reg":
            continue
        if node.startswith("memory"):
            numa = props.get(f"{node}/numa-node-id")
            for r in regs(path):
                memory.append(Labelled(r, node, None if numa is None else _int(numa)))
        elif node.startswith("reserved-memory/"):
            no_map = f"{node}/no-map" in props
            for r in regs(path):
                reserved.append(DtReservation(node.partition("/")[2], r, no_map))
    return GuestDt(tuple(memory), tuple(reserved), tuple(lines))
