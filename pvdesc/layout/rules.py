"""The one set of safety rules: judge a consumer's belief against what the hypervisor programs.

:func:`judge` takes a :class:`~pvdesc.layout.beliefs.Belief` (what Linux, or EDK2
building the UEFI map, believes about the guest's memory: from a DTB, or from a
layout pvdesc allocated) and a target (the region, the per-vCPU IPAs, the IPA
size and, when known, the memslots) and returns every finding, errors first.
``layout.verify``, ``check``, ``build --into``, ``map --dtb`` and ``prove`` all
come here, so they cannot drift apart.  The finding codes are listed in
:mod:`pvdesc.audit.check`'s docstring, where ``pvdesc check`` documents them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence

from pvdesc import kvm
from pvdesc.core.findings import Finding, Severity
from pvdesc.core.model import Target
from pvdesc.core.ranges import Labelled, Range, RangeIndex, merged, sweep_overlaps
from pvdesc.core.units import vcpus_text
from pvdesc.layout.beliefs import Belief
from pvdesc.layout.linux_memory import PAGE_MIN

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:  # only named in annotations: a check without --acpi loads no ACPI parser
    from pvdesc.read.acpitables import AcpiTable


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
        lambda _v, ipa: ipa // PAGE_MIN != (ipa + size - 1) // PAGE_MIN,
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
    first, last = region.base, region.end - size  # fits iff first <= ipa <= last (no Range made)
    out += _per_vcpu(
        target,
        lambda _v, ipa: not first <= ipa <= last,
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
    ends = [s.range.end for s in slots]

    def in_no_slot(_v: int, ipa: int) -> bool:
        k = bisect.bisect_right(bases, ipa) - 1  # bases[k] <= ipa: the slot starting last
        return k < 0 or ipa + size > ends[k]

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


def _witness(areas: Sequence[Labelled], index: RangeIndex, s: Range) -> Labelled | None:
    """An area overlapping ``s`` (``index`` is a :class:`RangeIndex` of ``areas``), or ``None``."""
    i = index.overlapping(s)
    return None if i is None else areas[i]


def _ram_rules(belief: Belief, target: Target) -> list[Finding]:
    """Structures in RAM the consumer believes in, and what (if anything) takes them back.

    One :class:`RangeIndex` query per structure and kind: O((n + v) log n).  A
    structure is taken back when the *merged* no-map ranges contain it, so two
    adjacent no-map children together cover it, as memblock's nomap flag does.
    """
    ram = belief.ram
    memory = RangeIndex([a.range for a in ram])
    every = range(len(target.vcpu_ipas))
    if not every or memory.overlapping(_span(every, target)) is None:
        return []  # no structure can overlap RAM that their whole span does not overlap
    structs = _structs(target)
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
            key = ("no-map-under-uefi", ignored_by.label)
        elif pi is not None:
            key = ("ipa-in-mapped-reservation", belief.mapped[pi].label)
        elif ri is not None:
            key = ("ipa-in-memreserve", belief.memreserve[ri].label)
        else:
            key = ("ipa-in-ram", ram[mi].label)
        groups.setdefault(key, []).append((si, 0))
    out = []
    for (code, src), hits in groups.items():
        for run, span in _group(hits, target):
            who = _who(run, target)
            refused = _witness(belief.refused, refused_index, span)
            text = _ram_message(code, who, belief, refused)
            out.append(Finding(Severity.ERROR, code, text, span, src))
    return out


def _ram_message(code: str, who: str, belief: Belief, refused: Labelled | None) -> str:
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
            f"Linux refuses the no-map child {refused.label} (-EBUSY in "
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
                    f"the region {region} overlaps device {dev.label} {dev.range}: guest "
                    "accesses reach the wrong thing (a bus ranges window is where the OS places "
                    "device BARs); move the region to a free 64 KiB granule",
                    dev.range,
                    dev.label,
                )
            )
        else:
            out.append(
                Finding(
                    Severity.WARNING,
                    "granule-shared-with-device",
                    f"device {dev.label} {dev.range} shares a 64 KiB granule with the region "
                    f"{region}; a 64K-page guest cannot map one without the other (pvtime.rst: "
                    "set aside whole 64k pages): move the region to its own granule",
                    dev.range,
                    dev.label,
                )
            )
    memory = belief.ram
    # The no-map holes near the region, merged: a memory range's part inside the
    # granules is taken back iff one merged hole contains it (O(log n) each).
    holes = merged(a.range for a in belief.no_map if a.range.size > 0 and a.range.overlaps(grains))
    hole_index = RangeIndex(holes)
    for _, mi in sweep_overlaps([grains], [m.range for m in memory]):
        mem = memory[mi]
        if mem.label in ram_flagged:
            continue
        lo, hi = max(mem.range.base, grains.base), min(mem.range.end, grains.end)
        if hole_index.containing(Range(lo, hi - lo)) is None:
            out.append(
                Finding(
                    Severity.WARNING,
                    "granule-shared-with-ram",
                    f"usable RAM {mem.label} {mem.range} shares a 64 KiB granule with the "
                    f"region {region}; a 64K-page guest maps both with one attribute (pvtime.rst "
                    "64k advice): place the region in whole 64 KiB granules away from RAM",
                    mem.range,
                    mem.label,
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
