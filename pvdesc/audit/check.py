"""Audit a layout: can any vCPU's PV_TIME_ST structure collide with what the guest believes?

Pure functions over immutable data: a :class:`~pvdesc.read.dtb.DeviceTree`, a
:class:`~pvdesc.emit.hypervisor.Target` (the region, per-vCPU IPAs, IPA size and,
from a hypervisor config, the memslots), the boot mode and optional ACPI tables in,
a tuple of :class:`~pvdesc.audit.findings.Finding` out, rendered here as
``pvdesc.check/1`` JSON or text.  The verdict is ``unsafe`` iff any finding is an error.

:func:`check` asks :func:`pvdesc.layout.beliefs.believe` what the boot mode's consumer
(Linux, or EDK2 building the UEFI map) believes about the tree, then
:func:`judge` applies the one set of rules below.  ``layout.verify``, ``build
--into``, ``map --dtb`` and :func:`check_ipas` (IPAs reported by KVM) use
:func:`judge` too, so they cannot drift apart.
Reading files is left to the callers (:mod:`pvdesc.read.dtb`, :mod:`pvdesc.read.acpitables`,
:mod:`pvdesc.emit.hypervisor`, the CLI).

Finding codes (severity; rule and source; "ref" is ``docs/pvtime-and-dt.md``):

- ``ipa-in-ram`` (error): a structure lies in a ``/memory`` range not covered by
  a ``no-map`` reservation: the guest allocates the page, KVM overwrites it
  (docs/pvtime-and-dt.md §3).
- ``ipa-in-mapped-reservation`` (error): inside a ``/reserved-memory`` child
  without ``no-map``, or with ``reusable`` or a ``compatible``: it stays in the
  linear map with conflicting attributes, is handed out again, or a driver takes
  it (``fdt_init_reserved_mem_node``, drivers/of/of_reserved_mem.c).
- ``ipa-in-memreserve`` (error): only a ``/memreserve/`` entry covers it:
  ``memblock_reserve`` keeps it mapped (ref §4 "drivers/of/fdt.c").
- ``no-map-under-uefi`` (error): a ``no-map`` reservation is relied on with boot
  uefi-dt/uefi-acpi; EDK2 ignores ``/reserved-memory`` (measured, docs/boot-evidence.md §4).
- ``ipa-misaligned`` (error): KVM returns -EINVAL (vcpu.rst §3.1).
- ``structure-crosses-page`` (error): a 64-byte structure straddles a 4 KiB page.
- ``ipa-beyond-ipa-space`` (error): the structure ends above ``2**ipa_bits``.
- ``ipa-not-in-memslot`` (error): KVM refuses an IPA outside every memslot
  (``kvm_arm_pvtime_set_attr``, ref §2).
- ``ipa-outside-region`` (error): a vCPU's structure is not inside the region.
- ``region-overlaps-device`` (error): the region overlaps a device ``reg`` or a
  bus ``ranges`` window (a PCI host bridge's MMIO window holds BARs).
- ``granule-shared-with-device`` / ``granule-shared-with-ram`` (warning): a 64 KiB
  granule of the region also holds a device or usable RAM (pvtime.rst; Mark
  Rutland's review, ref §1).
- ``dedicated-memslot`` / ``region-in-ram-memslot`` (info): which memslot backs it.
- ``memslots-not-checked`` (info): no hypervisor config, so memslots are unknown.
- ``srat-covers-region`` (error): an enabled SRAT Memory Affinity entry covers
  the region (docs/acpi.md §1.4, §6.3: leave the region out of SRAT).
- ``ssdt-claim-mismatch`` (warning) / ``ssdt-claim-matches`` (info): an SSDT
  ``_CRS`` claim that disagrees with / equals the region (docs/acpi.md §6.2).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence

from pvdesc import kvm
from pvdesc.audit.findings import Finding, Severity, any_error
from pvdesc.core.model import Boot, Memslot
from pvdesc.core.ranges import Range, RangeIndex, merged, sweep_overlaps
from pvdesc.core.units import parse_quantity, vcpus_text
from pvdesc.emit.hypervisor import Target
from pvdesc.errors import PvdescError
from pvdesc.layout import beliefs
from pvdesc.layout.beliefs import Area, Belief

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true):
#: ``pvdesc check`` starts without typing, json or acpitables (names in annotations only).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pvdesc.read.acpitables import AcpiTable
    from pvdesc.read.dtb import DeviceTree

FORMAT = "pvdesc.check/1"
#: Smallest arm64 page: a structure crossing one needs two guest mappings.
PAGE_4K = 0x1000


class CheckInputError(PvdescError):
    """``--region``/``--vcpus``/``--ipa-bits``, or the IPAs to check, cannot be used."""


# --------------------------------------------------------------------------- inputs


def target_from_region(text: str, vcpus: int, ipa_bits: int = kvm.IPA_BITS_DEFAULT) -> Target:
    """``--region BASE:SIZE --vcpus N``: IPAs ``base + 64 * id`` (docs/vmm-layouts.md §1-5)."""
    base_s, sep, size_s = text.partition(":")
    try:
        if not sep:
            raise ValueError(text)
        base, size = parse_quantity(base_s.strip()), parse_quantity(size_s.strip())
    except ValueError:
        raise CheckInputError(
            f"--region {text!r} must be BASE:SIZE, e.g. 0x090a0000:64K", "--region"
        ) from None
    if size <= 0:
        raise CheckInputError("--region size must be positive", "--region")
    if not 1 <= vcpus <= kvm.KVM_MAX_VCPUS:
        raise CheckInputError(f"--vcpus must be 1..{kvm.KVM_MAX_VCPUS}", "--vcpus")
    if not kvm.IPA_BITS_MIN <= ipa_bits <= kvm.IPA_BITS_MAX:
        raise CheckInputError(
            f"--ipa-bits must be {kvm.IPA_BITS_MIN}..{kvm.IPA_BITS_MAX}", "--ipa-bits"
        )
    ipas = tuple((i, kvm.pvtime_ipa(base, i)) for i in range(vcpus))
    return Target(Range(base, size), ipas, ipa_bits, None, "--region")


# --------------------------------------------------------------------------- rules


def _group(hits: Sequence[tuple[int, int]], target: Target) -> Iterator[tuple[list[int], Range]]:
    """Group vCPU indexes (in ``target.vcpu_ipas``) into runs of consecutive ids."""
    idx = sorted(set(i for i, _ in hits), key=lambda i: target.vcpu_ipas[i][0])
    run: list[int] = []
    for i in idx:
        if run and target.vcpu_ipas[i][0] != target.vcpu_ipas[run[-1]][0] + 1:
            yield run, _span(run, target)
            run = []
        run.append(i)
    if run:
        yield run, _span(run, target)


def _span(run: Sequence[int], target: Target) -> Range:
    ipas = [target.vcpu_ipas[i][1] for i in run]
    lo, hi = min(ipas), max(ipas) + kvm.PVTIME_STRUCT_SIZE
    return Range(lo, hi - lo)


def _who(run: Sequence[int], target: Target) -> str:
    return vcpus_text(target.vcpu_ipas[run[0]][0], target.vcpu_ipas[run[-1]][0])


def _structs(target: Target) -> list[Range]:
    return [Range(ipa, kvm.PVTIME_STRUCT_SIZE) for _, ipa in target.vcpu_ipas]


def _per_vcpu(
    target: Target,
    bad: Callable[[int, int], bool],
    severity: Severity,
    code: str,
    text: Callable[[str], str],
) -> list[Finding]:
    """One finding per run of consecutive vCPUs for which ``bad(id, ipa)`` holds."""
    hits = [(i, 0) for i, (vid, ipa) in enumerate(target.vcpu_ipas) if bad(vid, ipa)]
    return [
        Finding(severity, code, text(_who(run, target)), span, target.source)
        for run, span in _group(hits, target)
    ]


def _abi_rules(target: Target) -> list[Finding]:
    size = kvm.PVTIME_STRUCT_SIZE
    limit = 1 << target.ipa_bits
    region = target.region
    out = _per_vcpu(
        target,
        lambda _v, ipa: ipa % kvm.PVTIME_IPA_ALIGN != 0,
        Severity.ERROR,
        "ipa-misaligned",
        lambda who: (
            f"{who}: PVTIME_IPA is not 64-byte aligned; KVM_SET_DEVICE_ATTR fails with "
            "-EINVAL (vcpu.rst §3.1): use base + 64 * id with a 64-byte aligned base"
        ),
    )
    out += _per_vcpu(
        target,
        lambda _v, ipa: ipa // PAGE_4K != (ipa + size - 1) // PAGE_4K,
        Severity.ERROR,
        "structure-crosses-page",
        lambda who: (
            f"{who}: the 64-byte structure crosses a 4 KiB page boundary; the guest's "
            "64-byte memremap then spans two pages: align the IPA to 64 bytes"
        ),
    )
    out += _per_vcpu(
        target,
        lambda _v, ipa: ipa + size > limit,
        Severity.ERROR,
        "ipa-beyond-ipa-space",
        lambda who: (
            f"{who}: the structure lies beyond the {target.ipa_bits}-bit IPA space "
            f"(limit {limit:#x}); the guest faults: move the region below the limit or raise "
            "ipa_bits"
        ),
    )
    out += _per_vcpu(
        target,
        lambda _v, ipa: not region.contains(Range(ipa, size)),
        Severity.ERROR,
        "ipa-outside-region",
        lambda who: (
            f"{who}: the structure lies outside the stolen-time region {region}; enlarge "
            "the region to at least 64 bytes per possible vCPU, or fix the IPAs"
        ),
    )
    if target.memslots is None:
        out.append(
            Finding(
                Severity.INFO,
                "memslots-not-checked",
                "no hypervisor config given, so memslots are unknown: make sure the region is "
                "backed by a memslot (KVM refuses a PVTIME_IPA outside every memslot, pvtime.c)",
                region,
                target.source,
            )
        )
        return out
    slots = sorted(target.memslots, key=lambda s: s.range.base)
    bases = [s.range.base for s in slots]

    def in_no_slot(_v: int, ipa: int) -> bool:
        k = bisect.bisect_right(bases, ipa) - 1
        return k < 0 or not slots[k].range.contains(Range(ipa, size))

    out += _per_vcpu(
        target,
        in_no_slot,
        Severity.ERROR,
        "ipa-not-in-memslot",
        lambda who: (
            f"{who}: the structure lies in no memslot of the hypervisor config; KVM "
            "refuses the IPA with -EINVAL (kvm_arm_pvtime_set_attr): add a memslot backing the "
            "region"
        ),
    )
    home = next((s for s in slots if s.range.contains(region)), None)
    if home is not None:
        dedicated = region.granules().contains(home.range)
        where = f"{target.source} memslots[slot {home.slot}]"
        if dedicated:
            out.append(
                Finding(
                    Severity.INFO,
                    "dedicated-memslot",
                    f"the region has its own memslot {home.slot} {home.range} (as QEMU, kvmtool "
                    "and crosvm do); every stolen-time update looks it up, making it KVM's "
                    "most-recently-used slot (lru_slot/last_used_slot cache), a negligible cost; "
                    "it must be migrated like RAM",
                    home.range,
                    where,
                )
            )
        else:
            out.append(
                Finding(
                    Severity.INFO,
                    "region-in-ram-memslot",
                    f"the region lies inside memslot {home.slot} {home.range}, which also backs "
                    "RAM: the firmware description alone keeps the guest off it",
                    home.range,
                    where,
                )
            )
    return out


def _witness(areas: Sequence[Area], index: RangeIndex, s: Range) -> Area | None:
    """An area overlapping ``s`` (``index`` is a :class:`RangeIndex` of ``areas``), or ``None``."""
    i = index.overlapping(s)
    return None if i is None else areas[i]


def _ram_rules(belief: Belief, target: Target) -> list[Finding]:
    """Structures in RAM the consumer believes in, and what (if anything) takes them back.

    One :class:`RangeIndex` query per structure and kind: O((n + v) log n).  A
    structure is taken back when the *merged* no-map ranges contain it, so two
    adjacent no-map children together cover it, as memblock's nomap flag does.
    """
    structs = _structs(target)
    ram = belief.ram
    memory = RangeIndex([a.range for a in ram])
    holes = merged(a.range for a in belief.no_map if a.range.size > 0)
    hole_index = RangeIndex(holes)
    ignored_index = RangeIndex(merged(a.range for a in belief.ignored if a.range.size > 0))
    ignored_by_index = RangeIndex([a.range for a in belief.ignored])
    refused_index = RangeIndex([a.range for a in belief.refused])
    mapped_index = RangeIndex([a.range for a in belief.mapped])
    memreserve = RangeIndex([a.range for a in belief.memreserve])
    groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for si, s in enumerate(structs):
        mi = memory.overlapping(s)
        if mi is None:
            continue
        if hole_index.containing(s) is not None:
            continue
        pi = mapped_index.overlapping(s)
        ri = memreserve.overlapping(s)
        ignored_by = _witness(belief.ignored, ignored_by_index, s)
        if ignored_index.containing(s) is not None and ignored_by is not None:
            key = ("no-map-under-uefi", ignored_by.source)
        elif pi is not None:
            key = ("ipa-in-mapped-reservation", belief.mapped[pi].source)
        elif ri is not None:
            key = ("ipa-in-memreserve", belief.memreserve[ri].source)
        else:
            key = ("ipa-in-ram", ram[mi].source)
        groups.setdefault(key, []).append((si, 0))
    out = []
    for (code, src), hits in groups.items():
        for run, span in _group(hits, target):
            who = _who(run, target)
            refused = _witness(belief.refused, refused_index, span)
            text = _ram_message(code, who, belief, refused)
            out.append(Finding(Severity.ERROR, code, text, span, src))
    return out


def _ram_message(code: str, who: str, belief: Belief, refused: Area | None) -> str:
    boot = belief.boot
    if code == "no-map-under-uefi":
        return (
            f"{who}: the structure is inside /memory and only a no-map /reserved-memory child "
            f"keeps it out, but with boot {boot} EDK2 builds the memory map from /memory alone "
            "and the guest gets it as System RAM (measured): move the region outside "
            "every /memory node, or cut it out of /memory"
        )
    if code == "ipa-in-mapped-reservation":
        return (
            f"{who}: the structure is in a /reserved-memory child without no-map, or one with "
            "reusable or a compatible: it stays in the guest's linear map, is allocated again, "
            "or a driver takes it (fdt_init_reserved_mem_node: a failing init clears no-map): "
            "use a plain no-map child (linux-dt) or move the region outside /memory"
        )
    if code == "ipa-in-memreserve":
        return (
            f"{who}: the structure is inside /memory and only /memreserve/ covers it: Linux "
            "keeps it in the linear map (memblock_reserve) and EDK2 ignores it: move the region "
            "outside /memory, or cut it out of /memory"
        )
    notes = []
    if boot.uefi:
        notes.append(
            f"{belief.consumer} puts it in the UEFI memory map: it reads every memory node's reg, "
            "at any depth, and ignores linux,usable-memory"
        )
    if belief.reserved_ignored and not boot.uefi:
        notes.append(f"/reserved-memory is ignored by Linux: {belief.reserved_ignored}")
    if refused is not None:
        notes.append(
            f"Linux refuses the no-map child {refused.source} (-EBUSY in "
            "early_init_dt_reserve_memory: it overlaps a range already reserved)"
        )
    note = f" ({'; '.join(notes)})" if notes else ""
    return (
        f"{who}: the structure lies in RAM the guest may allocate{note}; the guest hands the "
        "page out while KVM keeps writing it: "
        "move the region outside every /memory node (QEMU uses 0x090a0000), cut it out of "
        "/memory, or (linux-dt only) add a no-map /reserved-memory child"
    )


def _granule_rules(belief: Belief, target: Target, ram_flagged: set[str]) -> list[Finding]:
    region = target.region
    grains = region.granules()
    out: list[Finding] = []
    devices = belief.devices
    for _, di in sweep_overlaps([grains], [d.range for d in devices]):
        dev = devices[di]
        if dev.range.overlaps(region):
            out.append(
                Finding(
                    Severity.ERROR,
                    "region-overlaps-device",
                    f"the region {region} overlaps device {dev.source} {dev.range}: guest "
                    "accesses reach the wrong thing (a bus ranges window is where the OS places "
                    "device BARs); move the region to a free 64 KiB granule",
                    dev.range,
                    dev.source,
                )
            )
        else:
            out.append(
                Finding(
                    Severity.WARNING,
                    "granule-shared-with-device",
                    f"device {dev.source} {dev.range} shares a 64 KiB granule with the region "
                    f"{region}; a 64K-page guest cannot map one without the other (pvtime.rst: "
                    "set aside whole 64k pages): move the region to its own granule",
                    dev.range,
                    dev.source,
                )
            )
    memory = belief.ram
    # The no-map holes near the region, merged: a memory range's part inside the
    # granules is taken back iff one merged hole contains it (O(log n) each).
    holes = merged(a.range for a in belief.no_map if a.range.size > 0 and a.range.overlaps(grains))
    hole_index = RangeIndex(holes)
    for _, mi in sweep_overlaps([grains], [m.range for m in memory]):
        mem = memory[mi]
        if mem.source in ram_flagged:
            continue
        lo, hi = max(mem.range.base, grains.base), min(mem.range.end, grains.end)
        if hole_index.containing(Range(lo, hi - lo)) is None:
            out.append(
                Finding(
                    Severity.WARNING,
                    "granule-shared-with-ram",
                    f"usable RAM {mem.source} {mem.range} shares a 64 KiB granule with the "
                    f"region {region}; a 64K-page guest maps both with one attribute (pvtime.rst "
                    "64k advice): place the region in whole 64 KiB granules away from RAM",
                    mem.range,
                    mem.source,
                )
            )
    return out


def _acpi_rules(tables: Sequence[AcpiTable], target: Target) -> list[Finding]:
    region = target.region
    out: list[Finding] = []
    for table in tables:
        ma = [m for m in table.memory_affinity if m.enabled]
        for _, k in sweep_overlaps([region], [m.range for m in ma]):
            m = ma[k]
            out.append(
                Finding(
                    Severity.ERROR,
                    "srat-covers-region",
                    f"SRAT Memory Affinity (domain {m.proximity_domain}) {m.range} covers the "
                    f"region {region}: it says the region is RAM of a NUMA node "
                    "(docs/acpi.md §1.4); "
                    "leave the region out of SRAT",
                    m.range,
                    table.source(f"entry[{m.index}] (Memory Affinity)"),
                )
            )
        pvtm = [c for c in table.claims if c.device.split(".")[-1] == "PVTM"]
        claims = pvtm or [c for c in table.claims if c.range.overlaps(region)]
        if not claims:
            continue
        src = table.source(f"{claims[0].device or '(scope)'}._CRS")
        ranges = sorted(c.range for c in claims)
        if len(ranges) == 1 and ranges[0] == region:
            out.append(
                Finding(
                    Severity.INFO,
                    "ssdt-claim-matches",
                    f"the _CRS claim {region} matches the region (PNP0C02 marks it busy; "
                    "docs/acpi.md §6.2)",
                    region,
                    src,
                )
            )
        else:
            text = ", ".join(str(r) for r in ranges)
            lo = min(r.base for r in ranges)
            hi = max(r.end for r in ranges)
            out.append(
                Finding(
                    Severity.WARNING,
                    "ssdt-claim-mismatch",
                    f"the _CRS claim ({text}) disagrees with the region {region}: the OS would "
                    "reserve the wrong range; regenerate the SSDT for this region",
                    Range(lo, hi - lo),
                    src,
                )
            )
    return out


def judge(belief: Belief, target: Target) -> tuple[Finding, ...]:
    """Every finding for what a consumer believes (:mod:`pvdesc.layout.beliefs`) and a target.

    The one set of safety rules: ``check``, ``layout.verify``, ``build --into`` and
    ``map --dtb`` all come here.  Errors first.
    """
    findings = _abi_rules(target)
    ram = _ram_rules(belief, target)
    findings += ram
    findings += _granule_rules(belief, target, {f.source for f in ram})
    findings += _acpi_rules(belief.acpi, target)
    return tuple(sorted(findings, key=Finding.sort_key))


def check(
    dt: DeviceTree,
    target: Target,
    boot: Boot = Boot.LINUX_DT,
    acpi: Sequence[AcpiTable] = (),
) -> tuple[Finding, ...]:
    """Every finding for this DTB, target, boot mode and ACPI tables, errors first."""
    return judge(beliefs.believe(dt, boot, acpi), target)


def check_ipas(
    dt: DeviceTree,
    ipas: Sequence[tuple[int, int]],
    boot: Boot = Boot.LINUX_DT,
    *,
    region: Range | None = None,
    ipa_bits: int = kvm.IPA_BITS_DEFAULT,
    memslots: Sequence[Memslot] | None = None,
    acpi: Sequence[AcpiTable] = (),
    source: str = "reported IPAs",
) -> tuple[Finding, ...]:
    """Judge ``(vcpu id, PVTIME_IPA)`` pairs (e.g. what KVM reports) with :func:`check`'s rules.

    ``region`` defaults to the 64 KiB granules holding every structure, so only
    the RAM, reservation, device, granule and ABI rules speak; give the intended
    region to also get ``ipa-outside-region``.  ``memslots`` ``None`` means unknown.
    """
    if not ipas:
        raise CheckInputError("no IPAs to check", source)
    if region is None:
        lo = min(ipa for _, ipa in ipas)
        hi = max(ipa for _, ipa in ipas) + kvm.PVTIME_STRUCT_SIZE
        region = Range(lo, hi - lo).granules()
    slots = None if memslots is None else tuple(memslots)
    target = Target(region, tuple(ipas), ipa_bits, slots, source)
    return check(dt, target, boot, acpi)


def unsafe(findings: Sequence[Finding]) -> bool:
    """True iff any finding is an error."""
    return any_error(findings)


def verdict(findings: Sequence[Finding]) -> str:
    """``safe`` or ``unsafe``."""
    return "unsafe" if unsafe(findings) else "safe"


def finding_json(f: Finding) -> dict[str, Any]:
    """One finding as its ``pvdesc.check/1`` JSON object."""
    return {
        "severity": str(f.severity),
        "code": f.code,
        "message": f.message,
        "range": None if f.range is None else [f.range.base, f.range.end],
        "source": f.source,
    }


def to_json(findings: Sequence[Finding]) -> str:
    """The ``pvdesc.check/1`` document."""
    import json

    doc = {
        "format": FORMAT,
        "verdict": verdict(findings),
        "findings": [finding_json(f) for f in findings],
    }
    return json.dumps(doc, indent=2) + "\n"


def to_text(findings: Sequence[Finding]) -> str:
    """One line per finding, then the verdict."""
    lines = [f"{f.severity}: {f.code}: {f.source}: [{f.range}] {f.message}" for f in findings]
    lines.append(f"verdict: {verdict(findings)}")
    return "\n".join(lines) + "\n"
