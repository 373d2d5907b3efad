"""``pvdesc prove``: boot a real arm64 guest with a description's outputs and read what it believes.

The outputs are built (``pvdesc build --into``) in a temporary directory, then
Debian's arm64 kernel boots under ``qemu-system-aarch64`` (TCG, ``-cpu max``,
``virt``) the way the description says (docs/boot-evidence.md §3-5):

- ``linux-dt``: QEMU loads the kernel and hands it the DTB directly;
- ``uefi-dt``: EDK2 (``qemu-efi-aarch64``) boots it with the DT (``virt,acpi=off``);
- ``uefi-acpi``: EDK2 boots it with ACPI (``acpi=force``); the SSDT travels in
  the initrd (Linux ``initrd_table_override.rst``).

**Why the DTB is QEMU's own.**  QEMU rewrites every ``/memory`` node of the DTB it
is given from ``-m`` and ``-numa`` (hw/arm/boot.c ``arm_load_dtb``), and pvdesc's
own tree holds only memory nodes.  So the bootable DTB is QEMU's dump
(``-machine virt,dumpdtb=``) patched by :mod:`pvdesc.emit.patch`, and QEMU's RAM is
derived from the layout's ``/memory`` nodes (:func:`plan_machine`): ``-m`` is their
total and, with NUMA, one ``memory-backend-ram`` per node.  QEMU virt lays RAM out
as one range from 0x40000000, nodes end to end, so a layout is bootable only if its
``/memory`` nodes are exactly that; anything else is refused (:class:`ProveError`).
A region carved from the top of RAM and excluded is then *outside* QEMU's RAM: the
guest gets exactly the ``/memory`` the description states, but the region is not
backed here the way a real VMM's RAM memslot backs it (see :func:`scope`).

**What is read back.**  The guest's ``/init`` prints ``/proc/iomem`` and the
``/memory`` and ``/reserved-memory`` properties of the DT the kernel saw; the
kernel log (with ``efi=debug``: the UEFI memory map) comes over the serial console.
Each 64 KiB granule of the region gets a :class:`Status`: ``System RAM`` or RAM in
the EFI memory map fails; ``reserved`` (memblock nomap), a ``pnp`` claim, or
nothing at all passes.  The guest's RAM (``/proc/iomem`` System RAM + nomap
``reserved``, the DT memory nodes, the EFI map) must equal the layout's ``/memory``
nodes, so a mismatch is reported rather than silently passed.
"""

from __future__ import annotations

import enum
import json
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pvdesc import kvm
from pvdesc.commands.prove import guest
from pvdesc.core.model import Boot, Describe, Vmm
from pvdesc.core.ranges import Range, merged, subtract
from pvdesc.description.load import LoadedDescription, load
from pvdesc.emit import acpi, build, templating
from pvdesc.errors import DTError, ProveError, PvdescError, ToolError
from pvdesc.layout import allocate as layout
from pvdesc.layout import beliefs
from pvdesc.layout.allocate import Layout
from pvdesc.read import dtb

FORMAT = "pvdesc.prove/1"
#: Seconds before QEMU's process group is killed (one boot takes 10-30 s under TCG).
DEFAULT_TIMEOUT = 120.0
#: VMM profiles whose map QEMU virt reproduces: its own, and pvdesc's generic one.
BOOTABLE_VMMS = (Vmm.GENERIC_KVM, Vmm.QEMU_VIRT)
#: The kernel command line per boot mode.  ``panic=-1`` + QEMU ``-no-reboot``: a
#: panicking guest exits at once instead of hanging until the timeout.  ``efi=debug``
#: prints the UEFI memory map (drivers/firmware/efi/efi.c ``efi_print_memmap``).
APPEND = {
    Boot.LINUX_DT: "console=ttyAMA0 panic=-1 acpi=off",
    Boot.UEFI_DT: "console=ttyAMA0 panic=-1 acpi=off efi=debug",
    Boot.UEFI_ACPI: "console=ttyAMA0 panic=-1 acpi=force efi=debug",
}
#: Kernel log lines that show how the guest really booted (Linux 6.1 wording).
BOOT_PATH = {
    Boot.LINUX_DT: ("Machine model: ", "efi: UEFI not found."),
    Boot.UEFI_DT: ("Machine model: ", "efi: EFI v", "ACPI: Interpreter disabled"),
    Boot.UEFI_ACPI: ("efi: EFI v", "ACPI: Interpreter enabled"),
}
#: EFI memory types that are not RAM to the firmware (``efi_md_typeattr_format`` names).
EFI_NOT_RAM = frozenset({"Reserved", "Unusable", "MMIO", "MMIO Port"})
EFI_MMIO = frozenset({"MMIO", "MMIO Port"})
#: At most this many kernel-log lines of evidence per granule (tightest ranges first).
MAX_LOG_EVIDENCE = 8
#: Kernel log lines that say what a range *is* (zone and node spans only bound it):
#: UEFI memory map entries (``efi=debug``), memblock regions ("Early memory node
#: ranges"), PNP reservations (drivers/pnp/system.c), reserved-memory and memblock debug.
EVIDENCE_LOG = re.compile(
    r"efi:\s+0x|node\s+\d+: \[mem |system 00:[0-9a-f]+: |reserved mem|Reserved memory|memblock"
)

_EFI_RE = re.compile(r"efi:\s+0x(?P<lo>[0-9a-f]+)-0x(?P<hi>[0-9a-f]+) \[(?P<kind>[^|\]]+)\|")
_RANGE_RE = re.compile(
    r"(?:0x)?(?P<lo>[0-9a-fA-F]{8,16})\s*(?:-|\.\.)\s*(?:0x)?(?P<hi>[0-9a-fA-F]{8,16})\b"
)
_KERNEL_LINE_RE = re.compile(r"^\[\s*\d+\.\d+\] ")
_DT_RE = re.compile(r"^(?P<path>[^\s:][^:]*):(?P<hex>(?: [0-9a-f]{2})*)\s*$")


class Status(enum.StrEnum):
    """What the guest made of one granule of the region.

    - ``system-ram``: a ``System RAM`` line covers it: the guest may allocate it (fail);
    - ``firmware-ram``: the UEFI memory map gives it a RAM type (Conventional,
      Boot Data, ...): EDK2 may have placed data there (fail);
    - ``device``: another resource claims it, so it shares a granule with a device (fail);
    - ``reserved``: a top-level ``reserved`` line: memblock ``nomap``, never mapped
      or allocated (arm64 ``request_standard_resources``) (pass);
    - ``pnp``: only a ``pnp`` claim (the SSDT's PNP0C02 device) (pass);
    - ``absent``: no ``/proc/iomem`` line touches it: the guest does not know it (pass).
    """

    SYSTEM_RAM = "system-ram"
    FIRMWARE_RAM = "firmware-ram"
    DEVICE = "device"
    RESERVED = "reserved"
    PNP = "pnp"
    ABSENT = "absent"

    @property
    def safe(self) -> bool:
        """True when the guest can never use the granule as RAM."""
        return self in (Status.RESERVED, Status.PNP, Status.ABSENT)


#: What each describe mode should make the guest show.
EXPECTED = {
    Describe.NONE: Status.ABSENT,
    Describe.EXCLUDE: Status.ABSENT,
    Describe.RESERVED_MEMORY: Status.RESERVED,
    Describe.ACPI: Status.PNP,
}


@dataclass(frozen=True)
class Evidence:
    """One line the guest printed, and where.

    Attributes:
        source: ``/proc/iomem`` (``, below``/``, above`` for neighbours), ``kernel log``
            or ``devicetree``.
        line: the text as printed (timestamps kept).
    """

    source: str
    line: str


@dataclass(frozen=True)
class GranuleResult:
    """The verdict on one 64 KiB granule of the region.

    Attributes:
        range: the granule.
        status: what the guest made of it.
        expected: what the description should make it show.
        evidence: the lines that show it.
    """

    range: Range
    status: Status
    expected: Status
    evidence: tuple[Evidence, ...]

    @property
    def passed(self) -> bool:
        """Safe, and what the description says."""
        return self.status.safe and self.status is self.expected


@dataclass(frozen=True)
class Check:
    """A check beyond the granules (boot path, memory, SSDT).

    Attributes:
        name: ``boot-path``, ``memory`` or ``ssdt``.
        passed: whether it held.
        message: what was found, in one sentence.
        evidence: the lines that show it.
    """

    name: str
    passed: bool
    message: str
    evidence: tuple[Evidence, ...] = ()


@dataclass(frozen=True)
class EfiRegion:
    """One UEFI memory map entry as ``efi=debug`` printed it.

    Attributes:
        range: the range.
        kind: the memory type (``Conventional``, ``Boot Data``, ``MMIO``, ...).
        line: the log line.
    """

    range: Range
    kind: str
    line: str


@dataclass(frozen=True)
class DtMemory:
    """A ``reg`` entry of a ``/memory`` node in the DT the guest saw.

    Attributes:
        node: the node name (``memory@40000000``).
        range: the decoded range.
        numa_node: its ``numa-node-id``, or ``None``.
    """

    node: str
    range: Range
    numa_node: int | None


@dataclass(frozen=True)
class DtReservation:
    """A ``/reserved-memory`` child in the DT the guest saw.

    Attributes:
        node: the child's name (``stolen-time@bfff0000``).
        range: its decoded ``reg``.
        no_map: whether ``no-map`` is present.
    """

    node: str
    range: Range
    no_map: bool


@dataclass(frozen=True)
class GuestDt:
    """The memory facts of the devicetree the guest kernel saw (``/sys/firmware/devicetree``).

    Attributes:
        memory: ``/memory`` ``reg`` entries (none under UEFI: the EFI stub drops them).
        reserved: ``/reserved-memory`` children with a ``reg``.
        lines: the raw lines the guest printed.
    """

    memory: tuple[DtMemory, ...]
    reserved: tuple[DtReservation, ...]
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    """Everything one proof boot showed.

    Attributes:
        layout: the layout that was booted.
        source: the description's path.
        kernel: the kernel image booted.
        kernel_package: its Debian package, when known.
        boot: the boot result: serial log, parsed ``/proc/iomem``, QEMU's command line.
        granules: one result per 64 KiB granule of the region.
        checks: boot path, memory and (describe acpi) SSDT checks.
        efi_map: the UEFI memory map the guest printed (empty for linux-dt).
        guest_dt: the DT memory facts the guest printed.
    """

    layout: Layout
    source: str
    kernel: str
    kernel_package: str
    boot: guest.BootResult
    granules: tuple[GranuleResult, ...]
    checks: tuple[Check, ...]
    efi_map: tuple[EfiRegion, ...]
    guest_dt: GuestDt

    @property
    def passed(self) -> bool:
        """Every granule and every check passed."""
        return all(g.passed for g in self.granules) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[str, ...]:
        """One phrase per failed granule or check."""
        out = []
        for g in self.granules:
            if not g.passed:
                seen = STATUS_TEXT[g.status]
                if g.status.safe:
                    seen += f", but the description makes it {STATUS_TEXT[g.expected]}"
                out.append(f"granule {g.range} is {seen}")
        out += [f"{c.name}: {c.message}" for c in self.checks if not c.passed]
        return tuple(out)


# --- the machine ----------------------------------------------------------------------------


def plan_machine(lay: Layout) -> guest.Machine:
    """The QEMU virt machine whose RAM is exactly the layout's ``/memory`` nodes.

    ``-m`` is their total; with NUMA, each node becomes a ``memory-backend-ram``
    and a ``-numa node`` in address order (hw/arm/boot.c lays them end to end from
    0x40000000), with the vCPUs split as pvdesc's SRAT splits them
    (:func:`pvdesc.emit.acpi.vcpu_node`).  Raises :class:`ProveError` (with a key path
    into the description) when QEMU virt cannot represent the layout.
    """
    desc = lay.description
    if desc.vmm not in BOOTABLE_VMMS:
        raise ProveError(
            f"prove boots QEMU's virt machine, which cannot reproduce {desc.vmm}'s memory map "
            "(RAM base, MMIO windows, fixed region); prove takes vmm generic-kvm or qemu-virt",
            ("vmm",),
        )
    per_node: list[tuple[int | None, int]] = []
    cursor = guest.QEMU_VIRT_RAM_BASE
    for node in sorted(lay.memory_nodes, key=lambda n: n.range.base):
        where = (*node.bank.path, "base")
        if node.range.base != cursor:
            if cursor == guest.QEMU_VIRT_RAM_BASE:
                raise ProveError(
                    f"/memory starts at {node.range.base:#x}, but QEMU virt's RAM starts at "
                    f"{guest.QEMU_VIRT_RAM_BASE:#x} (hw/arm/virt.c VIRT_MEM), so prove cannot "
                    "boot this layout",
                    where,
                )
            gap = Range(cursor, max(node.range.base - cursor, 1))
            what = " (the stolen-time region cut out of RAM)" if gap.overlaps(lay.region) else ""
            raise ProveError(
                f"/memory range {node.range} follows a gap at {gap}{what}, but QEMU virt makes "
                "RAM one range from 0x40000000 with NUMA nodes end to end (hw/arm/boot.c), so "
                "prove cannot boot it; only a region at the top of RAM or outside RAM can be "
                "proven",
                where,
            )
        if per_node and per_node[-1][0] == node.numa_node:
            per_node[-1] = (node.numa_node, per_node[-1][1] + node.range.size)
        else:
            per_node.append((node.numa_node, node.range.size))
        cursor = node.range.end
    shape: list[str] = []
    if desc.numa:
        ids = [n for n, _ in per_node]
        if ids != list(range(len(ids))):
            raise ProveError(
                f"NUMA nodes in address order are {ids}, but QEMU virt numbers them 0, 1, ... "
                "in address order (hw/arm/boot.c), so prove cannot boot this layout",
                ("memory",),
            )
        for i, size in per_node:
            shape += ["-object", f"memory-backend-ram,id=pvdesc-ram{i},size={_size(size)}"]
            cpus = [v for v in range(desc.max_vcpus) if acpi.vcpu_node(desc, v) == i]
            spec = f"node,nodeid={i},memdev=pvdesc-ram{i}"
            if cpus:
                spec += f",cpus={cpus[0]}-{cpus[-1]}"
            shape += ["-numa", spec]
    total = sum(size for _, size in per_node)
    options = "virt,gic-version=3" + (",acpi=off" if desc.boot is Boot.UEFI_DT else "")
    return guest.Machine(
        memory=_checked_size(total),
        smp=desc.vcpus,
        maxcpus=desc.max_vcpus,
        uefi=desc.boot.uefi,
        append=APPEND[desc.boot],
        machine=options,
        shape=tuple(shape),
    )


def _checked_size(size: int) -> int:
    if size % guest.QEMU_RAM_ALIGN:
        raise ProveError(
            f"RAM of {size:#x} bytes is not a multiple of 8 KiB, and QEMU would round it up",
            ("memory",),
        )
    return size


def _size(size: int) -> str:
    return guest.qemu_size(_checked_size(size))


# --- the parts ------------------------------------------------------------------------------


def guest_parts(kernel: str | Path | None = None) -> guest.GuestParts:
    """The kernel (``kernel``, or the cached one) and the cached busybox.

    Missing parts raise :class:`ToolError` naming ``scripts/fetch-guest``.
    """
    if kernel is None:
        return guest.find_parts()
    path = Path(kernel)
    if not path.is_file():
        raise ToolError(
            f"no such kernel image; omit --kernel to use the one {guest.FETCH_GUEST} caches",
            str(kernel),
        )
    busybox = guest.cache_dir() / "busybox"
    if not busybox.is_file():
        raise ToolError(f"guest busybox missing: run {guest.FETCH_GUEST}", str(busybox))
    return guest.GuestParts(path, busybox, "")


# --- booting --------------------------------------------------------------------------------


def prove(
    loaded: LoadedDescription,
    lay: Layout,
    parts: guest.GuestParts,
    timeout: float = DEFAULT_TIMEOUT,
) -> Report:
    """Build the outputs for ``lay`` into a temporary directory, boot them, judge the guest.

    ``lay`` need not come from :func:`pvdesc.layout.allocate.allocate`: the negative-control
    tests build unsafe layouts by hand.  Errors with key paths name ``loaded``'s file.
    """
    try:
        return _prove(loaded, lay, parts, timeout)
    except PvdescError as err:
        raise loaded.source.resolve(err) from None


def _prove(
    loaded: LoadedDescription, lay: Layout, parts: guest.GuestParts, timeout: float
) -> Report:
    if not timeout > 0:
        raise ProveError(f"the timeout must be positive, not {timeout:g}", "--timeout")
    machine = plan_machine(lay)
    base = guest.dump_dtb(machine)
    # RAM as the description's boot consumer reads QEMU's tree, and as it reads the layout.
    qemu_ram = list(
        beliefs.believe(dtb.parse(base, "QEMU virt dumpdtb"), lay.description.boot).ram_ranges
    )
    ours = list(layout.belief(lay).ram_ranges)
    if qemu_ram != ours:
        raise ProveError(
            f"QEMU made RAM {_ranges(qemu_ram)} for {' '.join(guest.machine_args(machine))}, "
            f"not the description's /memory {_ranges(ours)}",
            ("memory",),
        )
    name = lay.description.name
    with tempfile.TemporaryDirectory(prefix="pvdesc-prove-") as tmp:
        try:
            outputs = build.render_outputs(loaded, lay, base, tmp)
        except DTError as err:
            raise ProveError(
                f"QEMU virt's own devicetree cannot host this layout ({err.message}); prove "
                "boots QEMU virt, so the region must avoid its devices",
                ("stolen_time",),
            ) from None
        # QEMU reads only the DTB from disk; the SSDT goes into the initrd from memory.
        files = {o.name: o for o in outputs}
        build.write_outputs(Path(tmp), [files[f"{name}.dtb"]])
        tables: dict[str, bytes] = {}
        if lay.describe is Describe.ACPI:
            tables["ssdt.aml"] = files[f"{name}.ssdt.aml"].data
        initrd = guest.acpi_table_archive(tables) if tables else b""
        initrd += guest.initramfs(parts.busybox.read_bytes())
        machine = replace(machine, dtb=Path(tmp) / f"{name}.dtb")
        result = guest.boot(machine, parts, initrd, timeout)
    return judge(lay, result, loaded.source.file, parts)


def prove_file(
    path: str | Path, kernel: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Report:
    """``pvdesc prove``: load, allocate, check QEMU can host it, find the parts, boot."""
    loaded = load(path)
    try:
        lay = layout.allocate(loaded.description)
        plan_machine(lay)
    except PvdescError as err:
        raise loaded.source.resolve(err) from None
    return prove(loaded, lay, guest_parts(kernel), timeout)


# --- reading what the guest printed ---------------------------------------------------------


def log_lines(serial: str) -> tuple[str, ...]:
    """The kernel log: serial lines outside the ``/init`` marker sections, and timestamped
    kernel lines that the console interleaved into them."""
    out: list[str] = []
    skip_until: str | None = None
    ends = {guest.IOMEM_BEGIN: guest.IOMEM_END, guest.DT_BEGIN: guest.DT_END}
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


def _int(hex_bytes: str) -> int:
    data = hex_bytes.split()
    return int("".join(data), 16) if data else 0


def guest_devicetree(serial: str) -> GuestDt:
    """Decode the DT lines the guest's ``/init`` printed (``path: hex bytes``)."""
    text = guest.section(serial, guest.DT_BEGIN, guest.DT_END) or ""
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

    memory: list[DtMemory] = []
    reserved: list[DtReservation] = []
    for path in props:
        node, _, prop = path.rpartition("/")
        if prop != "reg":
            continue
        if node.startswith("memory"):
            numa = props.get(f"{node}/numa-node-id")
            for r in regs(path):
                memory.append(DtMemory(node, r, None if numa is None else _int(numa)))
        elif node.startswith("reserved-memory/"):
            no_map = f"{node}/no-map" in props
            for r in regs(path):
                reserved.append(DtReservation(node.partition("/")[2], r, no_map))
    return GuestDt(tuple(memory), tuple(reserved), tuple(lines))


def iomem_line(entry: guest.IomemEntry) -> str:
    """An entry as ``/proc/iomem`` prints it (``%0*llx``, width 8, two spaces per level)."""
    r = entry.range
    return f"{'  ' * entry.depth}{r.base:08x}-{r.last:08x} : {entry.name}"


def _log_ranges(lines: Iterable[str]) -> list[tuple[Range, str]]:
    out = []
    for line in lines:
        for m in _RANGE_RE.finditer(line):
            lo, hi = int(m["lo"], 16), int(m["hi"], 16)
            if hi >= lo:
                out.append((Range(lo, hi - lo + 1), line))
    return out


# --- judging --------------------------------------------------------------------------------


def granules(region: Range) -> tuple[Range, ...]:
    """The 64 KiB granules the region touches."""
    g = region.granules(kvm.GRANULE)
    return tuple(Range(b, kvm.GRANULE) for b in range(g.base, g.end, kvm.GRANULE))


def judge_granule(
    g: Range,
    expected: Status,
    iomem: Sequence[guest.IomemEntry],
    efi: Sequence[EfiRegion],
    log: Sequence[tuple[Range, str]],
    dt: GuestDt,
) -> GranuleResult:
    """Classify one granule from ``/proc/iomem`` and the UEFI map (see :class:`Status`)."""
    hits = [e for e in iomem if e.range.overlaps(g)]
    fw = [r for r in efi if r.range.overlaps(g) and r.kind not in EFI_NOT_RAM]
    others = [
        e
        for e in hits
        if not (e.depth == 0 and e.name == "reserved") and not e.name.startswith("pnp ")
    ]
    if any(e.name == "System RAM" for e in hits):
        status = Status.SYSTEM_RAM
    elif fw:
        status = Status.FIRMWARE_RAM
    elif others:
        status = Status.DEVICE
    elif any(e.name == "reserved" for e in hits):
        status = Status.RESERVED
    elif hits:
        status = Status.PNP
    else:
        status = Status.ABSENT
    top = [e for e in iomem if e.depth == 0]
    below = [e for e in top if e.range.end <= g.base]
    above = [e for e in top if e.range.base >= g.end]
    evidence = []
    if below:
        near = max(below, key=lambda e: e.range.end)
        evidence.append(Evidence("/proc/iomem, below", iomem_line(near)))
    evidence += [Evidence("/proc/iomem", iomem_line(e)) for e in hits]
    if above:
        near = min(above, key=lambda e: e.range.base)
        evidence.append(Evidence("/proc/iomem, above", iomem_line(near)))
    near_log = sorted(
        (r.size, line) for r, line in log if r.overlaps(g) and EVIDENCE_LOG.search(line)
    )
    seen: set[str] = set()
    for _, line in near_log:
        if line not in seen and len(seen) < MAX_LOG_EVIDENCE:
            seen.add(line)
            evidence.append(Evidence("kernel log", line))
    for res in dt.reserved:
        if res.range.overlaps(g):
            flag = " no-map" if res.no_map else ""
            text = f"/reserved-memory/{res.node}: reg {res.range}{flag}"
            evidence.append(Evidence("devicetree", text))
    return GranuleResult(g, status, expected, tuple(evidence))


def _ranges(rs: Sequence[Range]) -> str:
    return ", ".join(str(r) for r in rs) or "none"


def _boot_path(boot: Boot, lines: Sequence[str]) -> Check:
    found: list[Evidence] = []
    missing = []
    for marker in BOOT_PATH[boot]:
        line = next((ln for ln in lines if marker in ln), None)
        if line is None:
            missing.append(marker.strip())
        else:
            found.append(Evidence("kernel log", line))
    if missing:
        return Check(
            "boot-path",
            False,
            f"the guest did not boot as {boot} says: no kernel log line with "
            + ", ".join(repr(m) for m in missing),
            tuple(found),
        )
    return Check("boot-path", True, f"the guest booted as {boot} says", tuple(found))


def _by_node(pairs: Iterable[tuple[int | None, Range]]) -> dict[int | None, tuple[Range, ...]]:
    grouped: dict[int | None, list[Range]] = {}
    for node, r in pairs:
        grouped.setdefault(node, []).append(r)
    return {node: tuple(merged(rs)) for node, rs in grouped.items()}


def _nodes_text(nodes: dict[int | None, tuple[Range, ...]]) -> str:
    return ", ".join(f"node {n}: {_ranges(rs)}" for n, rs in sorted(nodes.items(), key=str))


def _memory(
    lay: Layout, iomem: Sequence[guest.IomemEntry], efi: Sequence[EfiRegion], dt: GuestDt
) -> Check:
    """The guest's RAM, from every source it printed, against the RAM the model predicts.

    The prediction is :func:`pvdesc.layout.allocate.belief`'s, the one ``check`` judges.
    """
    ours = layout.belief(lay).ram_ranges
    mmio = [r.range for r in efi if r.kind in EFI_MMIO]
    ram = [e.range for e in iomem if e.depth == 0 and e.name in ("System RAM", "reserved")]
    sources: list[tuple[str, tuple[Range, ...]]] = [
        ("/proc/iomem System RAM + reserved", tuple(merged(subtract(ram, mmio))))
    ]
    boot = lay.description.boot
    if boot.uefi:
        efi_ram = merged(r.range for r in efi if r.kind not in EFI_MMIO)
        sources.append(("EFI memory map", tuple(efi_ram)))
    # Under ACPI the EFI stub hands Linux a stub DT without /memory; otherwise the guest's DT
    # keeps QEMU's rewritten memory nodes (EDK2 passes the DT on as is).
    with_dt = boot is not Boot.UEFI_ACPI
    if with_dt:
        sources.append(("devicetree /memory", tuple(merged(m.range for m in dt.memory))))
    bad = [f"{name} shows {_ranges(got)}" for name, got in sources if got != ours]
    evidence = tuple(Evidence("devicetree", ln) for ln in dt.lines if ln.startswith("memory"))
    if not bad and with_dt:
        seen = _by_node((m.numa_node, m.range) for m in dt.memory)
        want = _by_node((m.numa_node, m.range) for m in lay.memory_nodes)
        if seen != want:
            bad.append(
                f"devicetree numa-node-id gives {_nodes_text(seen)}, not {_nodes_text(want)}"
            )
    if bad:
        what = "; ".join(bad)
        return Check(
            "memory",
            False,
            f"the guest's RAM is not the description's /memory {_ranges(ours)}: {what}",
            evidence,
        )
    names = ", ".join(name for name, _ in sources)
    return Check(
        "memory",
        True,
        f"the guest's RAM is exactly the description's /memory {_ranges(ours)} ({names})",
        evidence,
    )


def _ssdt(lay: Layout, lines: Sequence[str]) -> Check:
    ids = lay.description.acpi
    region = lay.region
    installed = re.compile(
        rf"ACPI: Table Upgrade: install \[SSDT-{re.escape(ids.oem_id)}-\s*"
        rf"{re.escape(ids.oem_table_id)}\s*\]"
    )
    claimed = re.compile(
        rf"system 00:[0-9a-f]+: \[mem {region.base:#010x}-{region.last:#010x}\] has been reserved"
    )
    found = {
        what: next((ln for ln in lines if rx.search(ln)), None)
        for what, rx in (("installed", installed), ("claimed", claimed))
    }
    evidence = tuple(Evidence("kernel log", ln) for ln in found.values() if ln is not None)
    problems = {
        "installed": "installed from the initrd",
        "claimed": f"used: no PNP0C02 reservation of {region}",
    }
    missing = [problems[what] for what, ln in found.items() if ln is None]
    if missing:
        return Check("ssdt", False, "the SSDT was not " + " and ".join(missing), evidence)
    return Check(
        "ssdt",
        True,
        f"Linux installed the SSDT and its PNP0C02 device reserved {region}",
        evidence,
    )


def judge(
    lay: Layout, result: guest.BootResult, source: str = "", parts: guest.GuestParts | None = None
) -> Report:
    """Judge a boot: every granule of the region, the boot path, the RAM, the SSDT."""
    lines = log_lines(result.serial)
    efi = efi_map(lines)
    dt = guest_devicetree(result.serial)
    log = _log_ranges(lines)
    expected = EXPECTED[lay.describe]
    results = tuple(
        judge_granule(g, expected, result.iomem, efi, log, dt) for g in granules(lay.region)
    )
    boot = lay.description.boot
    checks = [_boot_path(boot, lines)]
    if boot.uefi and not efi:
        checks.append(
            Check("efi-map", False, "the guest printed no UEFI memory map (efi=debug)", ())
        )
    checks.append(_memory(lay, result.iomem, efi, dt))
    if lay.describe is Describe.ACPI:
        checks.append(_ssdt(lay, lines))
    return Report(
        layout=lay,
        source=source,
        kernel=str(parts.kernel) if parts else "",
        kernel_package=parts.kernel_package if parts else "",
        boot=result,
        granules=results,
        checks=tuple(checks),
        efi_map=efi,
        guest_dt=dt,
    )


# --- what a boot does and does not show -----------------------------------------------------


def scope(lay: Layout) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(what a pass proves, what no boot here proves) for this layout."""
    desc = lay.description
    how = {
        Boot.LINUX_DT: "loaded directly with the patched DTB",
        Boot.UEFI_DT: "booted by EDK2 with the patched DTB",
        Boot.UEFI_ACPI: "booted by EDK2 with ACPI and the SSDT from the initrd",
    }[desc.boot]
    proven = [
        f"A real arm64 Linux kernel, {how}, was given exactly the description's /memory "
        "nodes (QEMU's RAM was derived from them and the guest's RAM was read back).",
        "It did not count any 64 KiB granule of the region as RAM: no System RAM line "
        + ("and no RAM type in the UEFI memory map " if desc.boot.uefi else "")
        + "covers it.",
    ]
    if lay.describe is Describe.RESERVED_MEMORY:
        proven.append(
            "Linux honoured /reserved-memory no-map: the region is memblock nomap. Here, as in a "
            "real VMM's RAM memslot, the region is backed by RAM inside the /memory node."
        )
    if lay.describe is Describe.ACPI:
        proven.append("Linux installed the SSDT and its PNP0C02 device claimed the region.")
    not_proven = [
        "KVM's side: this runs under TCG, so PV_TIME_ST is never called and nothing writes "
        "the region; the memslot and IPA rules are pvdesc build's and check's, not this boot's.",
    ]
    if lay.host_bank is not None and lay.describe is not Describe.RESERVED_MEMORY:
        not_proven.append(
            f"Backing: the region is cut out of memory[{lay.host_bank.index}], whose RAM "
            "memslot covers it in a real VMM; QEMU cannot express that, so here its RAM ends "
            f"at the region's base {lay.region.base:#x} and the region is unbacked. The "
            "guest's view (the /memory it is told) is the same; the backing is not."
        )
    elif lay.host_bank is None:
        not_proven.append(
            "Backing: the region is outside RAM and unbacked here (no KVM, so no stolen-time "
            "memslot); the guest's view is the same as with the real memslot."
        )
    not_proven.append(
        "Only /memory, /reserved-memory and the SSDT are pvdesc's; every other DT node and ACPI "
        "table is QEMU virt's own, not the target VMM's."
    )
    if desc.boot.uefi:
        not_proven.append(
            "Firmware: this is Debian's EDK2 build for QEMU; other firmware may build its memory "
            "map differently."
        )
    if lay.describe is Describe.ACPI and desc.numa:
        not_proven.append(
            "pvdesc's SRAT is not loaded: QEMU builds its own from the same -numa layout."
        )
    not_proven.append(
        "Other kernels, and later changes (memory hotplug, kexec): this is one boot of one kernel."
    )
    return tuple(proven), tuple(not_proven)


# --- output ---------------------------------------------------------------------------------


def _range_json(r: Range) -> list[int]:
    return [r.base, r.end]


def _evidence_json(ev: Sequence[Evidence]) -> list[dict[str, str]]:
    return [{"source": e.source, "line": e.line} for e in ev]


def to_json(report: Report) -> str:
    """The ``pvdesc.prove/1`` JSON document (ranges are ``[start, end_exclusive]``)."""
    lay = report.layout
    proven, not_proven = scope(lay)
    data: dict[str, Any] = {
        "format": FORMAT,
        "vm": lay.description.name,
        "description": report.source,
        "boot": str(lay.description.boot),
        "placement": str(lay.placement),
        "describe": str(lay.describe),
        "region": _range_json(lay.region),
        "verdict": "pass" if report.passed else "fail",
        "kernel": {"path": report.kernel, "package": report.kernel_package},
        "qemu": list(report.boot.argv),
        "memory": [_range_json(r) for r in merged(n.range for n in lay.memory_nodes)],
        "granules": [
            {
                "range": _range_json(g.range),
                "status": str(g.status),
                "expected": str(g.expected),
                "verdict": "pass" if g.passed else "fail",
                "evidence": _evidence_json(g.evidence),
            }
            for g in report.granules
        ],
        "checks": [
            {
                "name": c.name,
                "verdict": "pass" if c.passed else "fail",
                "message": c.message,
                "evidence": _evidence_json(c.evidence),
            }
            for c in report.checks
        ],
        "iomem": [iomem_line(e) for e in report.boot.iomem],
        "devicetree": list(report.guest_dt.lines),
        "failures": list(report.failures),
        "a_pass_proves": list(proven),
        "not_proven": list(not_proven),
    }
    return json.dumps(data, indent=2) + "\n"


STATUS_TEXT = {
    Status.SYSTEM_RAM: "System RAM",
    Status.FIRMWARE_RAM: "RAM in the UEFI memory map",
    Status.DEVICE: "claimed by a device",
    Status.RESERVED: "reserved (nomap)",
    Status.PNP: "pnp claim",
    Status.ABSENT: "not present",
}


def to_text(report: Report) -> str:
    """The human report (``templates/prove.txt.j2``)."""
    proven, not_proven = scope(report.layout)
    return templating.render(
        "prove.txt.j2",
        report=report,
        layout=report.layout,
        desc=report.layout.description,
        memory=_ranges(merged(n.range for n in report.layout.memory_nodes)),
        status_text=STATUS_TEXT,
        qemu=" ".join(report.boot.argv),
        proven=proven,
        not_proven=not_proven,
    )
