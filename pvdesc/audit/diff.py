"""Can a running guest migrate (or be saved and restored) between two stolen-time layouts?

Pure functions: two :class:`~pvdesc.audit.sides.Side` values in (each from a VM
description or a ``pvdesc.hypervisor/1`` config, :mod:`pvdesc.audit.sides`), a tuple of
:class:`~pvdesc.core.findings.Finding` out, rendered here as ``pvdesc.diff/1`` JSON or
text.  The guest
keeps what it learnt at boot, so the destination must reproduce it exactly
(``docs/pvtime-and-dt.md`` §6):

- the guest asks ``PV_TIME_ST`` for each vCPU's structure once, when the CPU
  comes up, maps that IPA and keeps reading it; the destination VMM sets
  ``PVTIME_IPA`` again from *its* config, so every vCPU that exists on both
  sides must get the same IPA (``ipa-changed``), and the region must not move
  or change size (``region-moved``, ``region-resized``);
- 53f985584e3c "KVM: arm64: pvtime: Fix stolen time accounting across
  migration" makes KVM read the current stolen time from guest memory rather
  than a kernel cache, so the region's contents must migrate like RAM: the
  memslot backing it must cover the same range, with the same purpose, on both
  sides (``region-memslot-changed``);
- a structure revision was discussed for migration, but no revision attribute
  was ever added: KVM only implements revision 0 (DEN0057A), so both sides must
  say 0 (``revision-mismatch``, ``revision-unsupported``);
- growing ``max_vcpus`` is harmless while the region stays put, but a VMM that
  sizes the region by ``max_vcpus`` (QEMU: ``REAL_HOST_PAGE_ALIGN(max_cpus * 64)``)
  or carves it from the top of a bank moves or resizes it
  (``max-vcpus-moves-region``);
- RAM the destination describes as usable must not newly cover the region
  (``ram-covers-region``): after its next boot the guest would be handed the
  pages KVM keeps writing.

Severity ``error`` means not compatible.  Findings: ``ipa-changed``,
``region-moved``, ``region-resized``, ``max-vcpus-moves-region``,
``region-memslot-changed``, ``revision-mismatch``, ``revision-unsupported``,
``stride-changed``, ``ram-covers-region``, ``ipa-beyond-ipa-space``,
``online-vcpus-dropped`` (errors: vCPUs online at boot on the source, from its
description's ``vcpus``, that the destination cannot hold);
``vcpus-only-on-source``, ``ipa-bits-changed``, ``ram-layout-changed``
(warnings); ``max-vcpus-grown``, ``compatible`` (info).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from pvdesc import kvm
from pvdesc.audit.sides import Side
from pvdesc.core.findings import Finding, Severity, any_error
from pvdesc.core.model import Memslot, Purpose
from pvdesc.core.ranges import RangeIndex
from pvdesc.core.units import vcpus_text

FORMAT = "pvdesc.diff/1"


# --------------------------------------------------------------------------- rules


def _runs(ids: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Consecutive runs ``(first, last)`` of sorted ids."""
    start = prev = None
    for i in ids:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None and prev is not None:
            yield start, prev
        start = prev = i
    if start is not None and prev is not None:
        yield start, prev


def _slot_text(slot: Memslot | None) -> str:
    if slot is None:
        return "no memslot"
    return f"memslot {slot.slot} {slot.range} ({slot.purpose})"


def _ipa_findings(old: Side, new: Side) -> list[Finding]:
    before, after = dict(old.vcpu_ipas), dict(new.vcpu_ipas)
    changed = sorted(i for i in before.keys() & after.keys() if before[i] != after[i])
    out = []
    for first, last in _runs(changed):
        out.append(
            Finding(
                Severity.ERROR,
                "ipa-changed",
                f"{vcpus_text(first, last)}: PVTIME_IPA {before[first]:#x} becomes "
                f"{after[first]:#x}"
                f"{'' if first == last else ' (and so on)'}; the guest asked PV_TIME_ST once "
                "when each CPU came up and keeps reading the old address, while KVM on the "
                "destination writes the new one: keep the region where it is",
            )
        )
    only_old = sorted(before.keys() - after.keys())
    online = old.online if old.online is not None else 0
    dropped = [i for i in only_old if i < online]
    for first, last in _runs(dropped):
        out.append(
            Finding(
                Severity.ERROR,
                "online-vcpus-dropped",
                f"{vcpus_text(first, last)} are online at boot on {old.source} (vcpus "
                f"{old.online}) but {new.source} has only max_vcpus {new.max_vcpus}: the running "
                "guest's CPUs have nowhere to go and KVM has no stolen-time structure for them: "
                f"keep max_vcpus at least {online} on the destination",
            )
        )
    for first, last in _runs([i for i in only_old if i >= online]):
        out.append(
            Finding(
                Severity.WARNING,
                "vcpus-only-on-source",
                f"{vcpus_text(first, last)} exist only on {old.source} "
                f"(max_vcpus {old.max_vcpus} -> "
                f"{new.max_vcpus}): a guest with them online cannot be restored on "
                f"{new.source}",
            )
        )
    return out


def _region_findings(old: Side, new: Side) -> list[Finding]:
    out = []
    moved = old.region.base != new.region.base
    resized = old.region.size != new.region.size
    if moved:
        out.append(
            Finding(
                Severity.ERROR,
                "region-moved",
                f"the stolen-time region moves from {old.region} to {new.region}: the guest "
                "keeps the old structures mapped; a migrated guest needs the same region",
            )
        )
    elif resized:
        out.append(
            Finding(
                Severity.ERROR,
                "region-resized",
                f"the stolen-time region changes size, {old.region} to {new.region}: its "
                "contents migrate like RAM (53f985584e3c), so source and destination must "
                "back the same range (QEMU refuses a RAM block whose length differs)",
            )
        )
    if new.max_vcpus > old.max_vcpus:
        if moved or resized:
            out.append(
                Finding(
                    Severity.ERROR,
                    "max-vcpus-moves-region",
                    f"max_vcpus grows from {old.max_vcpus} to {new.max_vcpus} and that moves or "
                    "resizes the region (it is sized by max_vcpus, or carved from the top of a "
                    "bank): give the VM the largest max_vcpus it will ever need from its first "
                    "boot, so the region never has to grow",
                )
            )
        else:
            out.append(
                Finding(
                    Severity.INFO,
                    "max-vcpus-grown",
                    f"max_vcpus grows from {old.max_vcpus} to {new.max_vcpus}; the new vCPUs' "
                    "structures fit in the same region",
                )
            )
    return out


def _memslot_findings(old: Side, new: Side) -> list[Finding]:
    out = []
    a, b = old.region_memslot, new.region_memslot
    same = (a is None and b is None) or (
        a is not None and b is not None and (a.range, a.purpose) == (b.range, b.purpose)
    )
    if not same:
        out.append(
            Finding(
                Severity.ERROR,
                "region-memslot-changed",
                f"the region is backed by {_slot_text(a)} on {old.source} but by "
                f"{_slot_text(b)} on {new.source}: its contents migrate with the memory that "
                "backs it (53f985584e3c), so that memslot must be the same on both sides",
            )
        )
    ram_a = sorted(s.range for s in old.memslots if s.purpose is Purpose.RAM)
    ram_b = sorted(s.range for s in new.memslots if s.purpose is Purpose.RAM)
    if ram_a != ram_b:
        text_a = ", ".join(str(r) for r in ram_a) or "none"
        text_b = ", ".join(str(r) for r in ram_b) or "none"
        out.append(
            Finding(
                Severity.WARNING,
                "ram-layout-changed",
                f"RAM memslots differ ({text_a} vs {text_b}): VMMs migrate RAM block by block "
                "and refuse a different RAM layout",
            )
        )
    return out


def _ram_findings(old: Side, new: Side) -> list[Finding]:
    out = []
    for region in sorted({old.region, new.region}):
        before, after = old.ram_over(region), new.ram_over(region)
        covered = RangeIndex(before)
        fresh = [r for r in after if covered.containing(r) is None]
        if fresh:
            out.append(
                Finding(
                    Severity.ERROR,
                    "ram-covers-region",
                    f"RAM on {new.source} ({', '.join(str(r) for r in fresh)}) covers the "
                    f"stolen-time region {region}, which RAM on {old.source} does not: after "
                    "its next boot the guest may allocate pages KVM keeps writing",
                )
            )
    return out


def _abi_findings(old: Side, new: Side) -> list[Finding]:
    out = []
    for side in (old, new):
        if side.revision != kvm.PVTIME_REVISION:
            out.append(
                Finding(
                    Severity.ERROR,
                    "revision-unsupported",
                    f"{side.source} says revision {side.revision}; KVM implements only revision "
                    f"{kvm.PVTIME_REVISION} (DEN0057A) and no revision attribute exists to "
                    "negotiate another (docs/pvtime-and-dt.md §6)",
                )
            )
    if old.revision != new.revision:
        out.append(
            Finding(
                Severity.ERROR,
                "revision-mismatch",
                f"the structure revision differs ({old.revision} vs {new.revision}): the guest "
                "reads the layout of the revision it booted with",
            )
        )
    if {old.stride, new.stride} != {kvm.PVTIME_STRUCT_SIZE}:
        out.append(
            Finding(
                Severity.ERROR,
                "stride-changed",
                f"the structure stride is {old.stride} vs {new.stride}; the ABI fixes 64 bytes "
                "per vCPU",
            )
        )
    if old.ipa_bits != new.ipa_bits:
        limit = 1 << new.ipa_bits
        beyond = [i for i, ipa in old.vcpu_ipas if ipa + kvm.PVTIME_STRUCT_SIZE > limit]
        if beyond:
            out.append(
                Finding(
                    Severity.ERROR,
                    "ipa-beyond-ipa-space",
                    f"{vcpus_text(beyond[0], beyond[-1])}' structures lie beyond the "
                    "destination's "
                    f"{new.ipa_bits}-bit IPA space",
                )
            )
        out.append(
            Finding(
                Severity.WARNING,
                "ipa-bits-changed",
                f"the IPA size changes from {old.ipa_bits} to {new.ipa_bits} bits: the VM is "
                "created with its IPA size (KVM_VM_TYPE_ARM_IPA_SIZE), and VMMs migrate only "
                "between identical ones",
            )
        )
    return out


def compare(old: Side, new: Side) -> tuple[Finding, ...]:
    """Every finding for migrating a running guest from ``old`` to ``new``, errors first."""
    found = [
        *_abi_findings(old, new),
        *_ipa_findings(old, new),
        *_region_findings(old, new),
        *_memslot_findings(old, new),
        *_ram_findings(old, new),
    ]
    if compatible(found):
        common = len(dict(old.vcpu_ipas).keys() & dict(new.vcpu_ipas).keys())
        found.append(
            Finding(
                Severity.INFO,
                "compatible",
                f"all {common} vCPUs present on both sides keep their PVTIME_IPA in "
                f"{new.region}, backed by the same memslot, revision {new.revision}",
            )
        )
    return tuple(sorted(found, key=lambda f: f.severity.rank))


def compatible(findings: Sequence[Finding]) -> bool:
    """True iff no finding is an error."""
    return not any_error(findings)


def finding_json(f: Finding) -> dict[str, Any]:
    """One finding as its ``pvdesc.diff/1`` JSON object."""
    return {"code": f.code, "severity": str(f.severity), "message": f.message}


def to_json(findings: Sequence[Finding]) -> str:
    """The ``pvdesc.diff/1`` document."""
    doc = {
        "format": FORMAT,
        "compatible": compatible(findings),
        "findings": [finding_json(f) for f in findings],
    }
    return json.dumps(doc, indent=2) + "\n"


def to_text(findings: Sequence[Finding], old: Side, new: Side) -> str:
    """One line per finding, then the verdict."""
    lines = [f"{f.severity}: {f.code}: {f.message}" for f in findings]
    verdict = "compatible" if compatible(findings) else "NOT compatible"
    lines.append(f"migration {old.source} -> {new.source}: {verdict}")
    return "\n".join(lines) + "\n"
