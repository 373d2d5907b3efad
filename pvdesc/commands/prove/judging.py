"""Judge a TCG proof boot: classify each granule of the region from what the guest printed,
and check the boot path, the guest's RAM and (describe acpi) the SSDT."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pvdesc import kvm
from pvdesc.commands.prove import guest
from pvdesc.commands.prove.verdict import (
    EXPECTED,
    Evidence,
    GranuleResult,
    Observation,
    ProveReport,
    Status,
)
from pvdesc.core.model import Boot, Describe
from pvdesc.core.ranges import Range, difference, merged
from pvdesc.layout import allocate as layout
from pvdesc.layout.allocate import Layout
from pvdesc.read.guest_output import (
    EfiRegion,
    GuestDt,
    IomemEntry,
    efi_map,
    guest_devicetree,
    iomem_line,
    log_lines,
    log_ranges,
)

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


def granules(region: Range) -> tuple[Range, ...]:
    """The 64 KiB granules the region touches."""
    g = region.granules(kvm.GRANULE)
    return tuple(Range(b, kvm.GRANULE) for b in range(g.base, g.end, kvm.GRANULE))


def judge_granule(
    g: Range,
    expected: Status,
    iomem: Sequence[IomemEntry],
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


def ranges_text(rs: Sequence[Range]) -> str:
    return ", ".join(str(r) for r in rs) or "none"


def _boot_path(boot: Boot, lines: Sequence[str]) -> Observation:
    found: list[Evidence] = []
    missing = []
    for marker in BOOT_PATH[boot]:
        line = next((ln for ln in lines if marker in ln), None)
        if line is None:
            missing.append(marker.strip())
        else:
            found.append(Evidence("kernel log", line))
    if missing:
        return Observation(
            "boot-path",
            False,
            f"the guest did not boot as {boot} says: no kernel log line with "
            + ", ".join(repr(m) for m in missing),
            tuple(found),
        )
    return Observation("boot-path", True, f"the guest booted as {boot} says", tuple(found))


def _by_node(pairs: Iterable[tuple[int | None, Range]]) -> dict[int | None, tuple[Range, ...]]:
    grouped: dict[int | None, list[Range]] = {}
    for node, r in pairs:
        grouped.setdefault(node, []).append(r)
    return {node: tuple(merged(rs)) for node, rs in grouped.items()}


def _nodes_text(nodes: dict[int | None, tuple[Range, ...]]) -> str:
    return ", ".join(f"node {n}: {ranges_text(rs)}" for n, rs in sorted(nodes.items(), key=str))


def _memory(
    lay: Layout, iomem: Sequence[IomemEntry], efi: Sequence[EfiRegion], dt: GuestDt
) -> Observation:
    """The guest's RAM, from every source it printed, against the RAM the model predicts.

    The prediction is :func:`pvdesc.layout.allocate.belief`'s, the one ``check`` judges.
    """
    ours = layout.belief(lay).ram_ranges
    mmio = [r.range for r in efi if r.kind in EFI_MMIO]
    ram = [e.range for e in iomem if e.depth == 0 and e.name in ("System RAM", "reserved")]
    sources: list[tuple[str, tuple[Range, ...]]] = [
        ("/proc/iomem System RAM + reserved", tuple(difference(ram, mmio)))
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
    bad = [f"{name} shows {ranges_text(got)}" for name, got in sources if got != ours]
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
        return Observation(
            "memory",
            False,
            f"the guest's RAM is not the description's /memory {ranges_text(ours)}: {what}",
            evidence,
        )
    names = ", ".join(name for name, _ in sources)
    return Observation(
        "memory",
        True,
        f"the guest's RAM is exactly the description's /memory {ranges_text(ours)} ({names})",
        evidence,
    )


def _ssdt(lay: Layout, lines: Sequence[str]) -> Observation:
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
        return Observation("ssdt", False, "the SSDT was not " + " and ".join(missing), evidence)
    return Observation(
        "ssdt",
        True,
        f"Linux installed the SSDT and its PNP0C02 device reserved {region}",
        evidence,
    )


def judge(
    lay: Layout, result: guest.BootResult, source: str = "", parts: guest.GuestParts | None = None
) -> ProveReport:
    """Judge a boot: every granule of the region, the boot path, the RAM, the SSDT."""
    lines = log_lines(result.serial)
    efi = efi_map(lines)
    dt = guest_devicetree(result.serial)
    log = log_ranges(lines)
    expected = EXPECTED[lay.describe]
    results = tuple(
        judge_granule(g, expected, result.iomem, efi, log, dt) for g in granules(lay.region)
    )
    boot = lay.description.boot
    checks = [_boot_path(boot, lines)]
    if boot.uefi and not efi:
        checks.append(
            Observation("efi-map", False, "the guest printed no UEFI memory map (efi=debug)", ())
        )
    checks.append(_memory(lay, result.iomem, efi, dt))
    if lay.describe is Describe.ACPI:
        checks.append(_ssdt(lay, lines))
    return ProveReport(
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
