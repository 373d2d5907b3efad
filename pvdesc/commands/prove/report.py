"""Render a TCG proof: what a pass proves and what it does not, as text and as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pvdesc.commands.prove.judging import ranges_text
from pvdesc.commands.prove.verdict import STATUS_TEXT, Evidence, ProveReport
from pvdesc.core.model import Boot, Describe
from pvdesc.core.ranges import Range, merged
from pvdesc.emit import templating
from pvdesc.layout.allocate import Layout
from pvdesc.read.guest_output import iomem_line

FORMAT = "pvdesc.prove/1"


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


def to_json(report: ProveReport) -> str:
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


def to_text(report: ProveReport) -> str:
    """The human report (``templates/prove.txt.j2``)."""
    proven, not_proven = scope(report.layout)
    return templating.render(
        "prove.txt.j2",
        report=report,
        layout=report.layout,
        desc=report.layout.description,
        memory=ranges_text(merged(n.range for n in report.layout.memory_nodes)),
        status_text=STATUS_TEXT,
        qemu=" ".join(report.boot.argv),
        proven=proven,
        not_proven=not_proven,
    )
