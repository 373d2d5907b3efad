"""Can a running guest migrate (or be saved and restored) between two stolen-time layouts?

Pure functions: two :class:`Side` values in (each from a VM description or a
``pvdesc.hypervisor/1`` config), a tuple of :class:`Finding` out.  The guest
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

import enum
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import yaml

from pvdesc import kvm
from pvdesc.audit import check
from pvdesc.audit.check import Memslot, vcpus_text
from pvdesc.audit.findings import Severity
from pvdesc.core.ranges import Range
from pvdesc.description.load import FAST_LOADER, loads
from pvdesc.emit import hypervisor
from pvdesc.errors import PvdescError
from pvdesc.layout import allocate as layout

FORMAT = "pvdesc.diff/1"


class DiffInputError(PvdescError):
    """One side of ``pvdesc diff`` cannot be used."""


@dataclass(frozen=True)
class Side:
    """One end of a migration, as far as stolen time is concerned.

    Attributes:
        source: where it came from (a file name).
        ipa_bits: the guest's IPA size.
        region: the stolen-time region.
        revision: the structure revision the config states.
        stride: bytes between consecutive vCPUs' structures.
        memslots: every memslot.
        vcpu_ipas: ``(vcpu id, PVTIME_IPA)`` for every possible vCPU, by id.
        usable_ram: what the firmware description tells the guest it may use, or
            ``None`` when only a hypervisor config is known.
        online: vCPUs online at boot (ids ``0..online-1``, the description's
            ``vcpus``), or ``None`` when only a hypervisor config is known.
    """

    source: str
    ipa_bits: int
    region: Range
    revision: int
    stride: int
    memslots: tuple[Memslot, ...]
    vcpu_ipas: tuple[tuple[int, int], ...]
    usable_ram: tuple[Range, ...] | None
    online: int | None = None

    @property
    def max_vcpus(self) -> int:
        """Possible vCPUs."""
        return len(self.vcpu_ipas)

    @property
    def region_memslot(self) -> Memslot | None:
        """The memslot that holds the whole region, if any."""
        return next((s for s in self.memslots if s.range.contains(self.region)), None)

    def ram_over(self, r: Range) -> tuple[Range, ...]:
        """The parts of ``r`` the guest may use as RAM (from the memslots when the DT is unknown).

        Without a firmware description, a ``ram`` memslot holding the region is
        taken at its word only when the region is not also the one it carves
        (the config cannot say whether the DT cuts it out).
        """
        if self.usable_ram is not None:
            ram = self.usable_ram
        else:
            home = self.region_memslot
            ram = tuple(s.range for s in self.memslots if s.purpose == "ram" and s is not home)
        out = []
        for piece in ram:
            lo, hi = max(piece.base, r.base), min(piece.end, r.end)
            if lo < hi:
                out.append(Range(lo, hi - lo))
        return tuple(sorted(out))


@dataclass(frozen=True)
class Finding:
    """One thing ``pvdesc diff`` found.

    Attributes:
        code: a stable identifier (see the module docstring).
        severity: error (not compatible), warning or info.
        message: what differs, why it matters, what to do.
    """

    code: str
    severity: Severity
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "severity": str(self.severity), "message": self.message}


# --------------------------------------------------------------------------- sides


def side_from_config(text: bytes, source: str) -> Side:
    """A side from a ``pvdesc.hypervisor/1`` config (validated as ``pvdesc check`` does)."""
    return _side_from_data(check.config_data(text, source), source)


def _side_from_data(data: dict[str, Any], source: str) -> Side:
    target = check.target_from_data(data, source)
    st = data["stolen_time"]
    ids = [vid for vid, _ in target.vcpu_ipas]
    if len(set(ids)) != len(ids):
        raise DiffInputError("vcpus lists a vCPU id twice", source)
    return Side(
        source=source,
        ipa_bits=target.ipa_bits,
        region=target.region,
        revision=check.config_int(st, "revision", source, "stolen_time"),
        stride=check.config_int(st, "stride", source, "stolen_time"),
        memslots=target.memslots or (),
        vcpu_ipas=tuple(sorted(target.vcpu_ipas)),
        usable_ram=None,
    )


def side_from_layout(lay: layout.Layout, source: str) -> Side:
    """A side from an allocated layout: its hypervisor config plus what its DT says is RAM."""
    side = _side_from_data(hypervisor.config(lay), source)
    usable = layout.belief(lay).usable_ram
    return replace(side, usable_ram=usable, online=lay.description.vcpus)


class Kind(enum.StrEnum):
    """What one input of ``pvdesc diff`` is."""

    CONFIG = "hypervisor config"
    DESCRIPTION = "VM description"


def _neither(why: str, source: str) -> DiffInputError:
    return DiffInputError(
        f"neither a VM description nor a {hypervisor.FORMAT} hypervisor config: {why}", source
    )


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return "a number"


def kind(data: bytes, source: str) -> Kind:
    """Decide by content, never by file name, whether ``data`` is a config or a description.

    A hypervisor config is a JSON object whose ``"format"`` is ``pvdesc.hypervisor/1``
    (pvdesc/emit/hypervisor.py writes that key first).  A description is a YAML mapping, and
    YAML is a superset of JSON, so a JSON object without ``"format"`` is a description in
    JSON syntax (descriptions have no such key).  Any other JSON value, a JSON object
    with another format, and YAML whose top node is not a mapping are neither:
    :class:`DiffInputError`.  Text that is not JSON is looked at only as far as its
    first key: ``format`` there means a config broken as JSON, anything else a
    description; their readers then say what is wrong and where.
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return _kind_of_text(data, source)
    if not isinstance(doc, dict):
        raise _neither(f"the JSON value is {_json_type(doc)}, not an object", source)
    if "format" not in doc:
        return Kind.DESCRIPTION
    if doc["format"] != hypervisor.FORMAT:
        shown = json.dumps(doc["format"])
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise _neither(f'"format" is {shown}', source)
    return Kind.CONFIG


def _kind_of_text(data: bytes, source: str) -> Kind:
    """:func:`kind` for what is not JSON, from its first YAML events (never composed)."""
    try:
        events = list(islice(yaml.parse(data.decode("utf-8"), Loader=FAST_LOADER), 4))
    except (UnicodeDecodeError, yaml.YAMLError):
        return Kind.DESCRIPTION  # the loader names the bad byte or where the syntax breaks
    top = events[2] if len(events) > 2 else None
    if isinstance(top, yaml.MappingStartEvent):
        first = events[3] if len(events) > 3 else None
        if isinstance(first, yaml.ScalarEvent) and first.value == "format":
            return Kind.CONFIG  # its JSON reader says where the JSON breaks
        return Kind.DESCRIPTION
    if isinstance(top, yaml.AliasEvent):
        return Kind.DESCRIPTION  # the loader says the alias is undefined
    if isinstance(top, yaml.ScalarEvent):
        what = "a scalar"
    elif isinstance(top, yaml.SequenceStartEvent):
        what = "a list"
    else:
        what = "empty"
    raise _neither(
        f"its YAML is {what}, not a mapping (name:, vcpus:, memory:, ...) or a JSON object",
        source,
    )


def side_from_bytes(data: bytes, source: str) -> Side:
    """A side from a file's bytes: a hypervisor config, or a description (allocated here)."""
    if kind(data, source) is Kind.CONFIG:
        return side_from_config(data, source)
    loaded = loads(data, source)
    try:
        lay = layout.allocate(loaded.description)
    except PvdescError as err:
        raise loaded.source.resolve(err) from None
    return side_from_layout(lay, source)


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
                "ipa-changed",
                Severity.ERROR,
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
                "online-vcpus-dropped",
                Severity.ERROR,
                f"{vcpus_text(first, last)} are online at boot on {old.source} (vcpus "
                f"{old.online}) but {new.source} has only max_vcpus {new.max_vcpus}: the running "
                "guest's CPUs have nowhere to go and KVM has no stolen-time structure for them: "
                f"keep max_vcpus at least {online} on the destination",
            )
        )
    for first, last in _runs([i for i in only_old if i >= online]):
        out.append(
            Finding(
                "vcpus-only-on-source",
                Severity.WARNING,
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
                "region-moved",
                Severity.ERROR,
                f"the stolen-time region moves from {old.region} to {new.region}: the guest "
                "keeps the old structures mapped; a migrated guest needs the same region",
            )
        )
    elif resized:
        out.append(
            Finding(
                "region-resized",
                Severity.ERROR,
                f"the stolen-time region changes size, {old.region} to {new.region}: its "
                "contents migrate like RAM (53f985584e3c), so source and destination must "
                "back the same range (QEMU refuses a RAM block whose length differs)",
            )
        )
    if new.max_vcpus > old.max_vcpus:
        if moved or resized:
            out.append(
                Finding(
                    "max-vcpus-moves-region",
                    Severity.ERROR,
                    f"max_vcpus grows from {old.max_vcpus} to {new.max_vcpus} and that moves or "
                    "resizes the region (it is sized by max_vcpus, or carved from the top of a "
                    "bank): give the VM the largest max_vcpus it will ever need from its first "
                    "boot, so the region never has to grow",
                )
            )
        else:
            out.append(
                Finding(
                    "max-vcpus-grown",
                    Severity.INFO,
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
                "region-memslot-changed",
                Severity.ERROR,
                f"the region is backed by {_slot_text(a)} on {old.source} but by "
                f"{_slot_text(b)} on {new.source}: its contents migrate with the memory that "
                "backs it (53f985584e3c), so that memslot must be the same on both sides",
            )
        )
    ram_a = sorted(s.range for s in old.memslots if s.purpose == "ram")
    ram_b = sorted(s.range for s in new.memslots if s.purpose == "ram")
    if ram_a != ram_b:
        text_a = ", ".join(str(r) for r in ram_a) or "none"
        text_b = ", ".join(str(r) for r in ram_b) or "none"
        out.append(
            Finding(
                "ram-layout-changed",
                Severity.WARNING,
                f"RAM memslots differ ({text_a} vs {text_b}): VMMs migrate RAM block by block "
                "and refuse a different RAM layout",
            )
        )
    return out


def _ram_findings(old: Side, new: Side) -> list[Finding]:
    out = []
    for region in sorted({old.region, new.region}):
        before, after = old.ram_over(region), new.ram_over(region)
        fresh = [r for r in after if not any(p.contains(r) for p in before)]
        if fresh:
            out.append(
                Finding(
                    "ram-covers-region",
                    Severity.ERROR,
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
                    "revision-unsupported",
                    Severity.ERROR,
                    f"{side.source} says revision {side.revision}; KVM implements only revision "
                    f"{kvm.PVTIME_REVISION} (DEN0057A) and no revision attribute exists to "
                    "negotiate another (docs/pvtime-and-dt.md §6)",
                )
            )
    if old.revision != new.revision:
        out.append(
            Finding(
                "revision-mismatch",
                Severity.ERROR,
                f"the structure revision differs ({old.revision} vs {new.revision}): the guest "
                "reads the layout of the revision it booted with",
            )
        )
    if {old.stride, new.stride} != {kvm.PVTIME_STRUCT_SIZE}:
        out.append(
            Finding(
                "stride-changed",
                Severity.ERROR,
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
                    "ipa-beyond-ipa-space",
                    Severity.ERROR,
                    f"{vcpus_text(beyond[0], beyond[-1])}' structures lie beyond the "
                    "destination's "
                    f"{new.ipa_bits}-bit IPA space",
                )
            )
        out.append(
            Finding(
                "ipa-bits-changed",
                Severity.WARNING,
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
                "compatible",
                Severity.INFO,
                f"all {common} vCPUs present on both sides keep their PVTIME_IPA in "
                f"{new.region}, backed by the same memslot, revision {new.revision}",
            )
        )
    return tuple(sorted(found, key=lambda f: f.severity.rank))


def compatible(findings: Sequence[Finding]) -> bool:
    """True iff no finding is an error."""
    return not any(f.severity is Severity.ERROR for f in findings)


def to_json(findings: Sequence[Finding]) -> str:
    """The ``pvdesc.diff/1`` document."""
    doc = {
        "format": FORMAT,
        "compatible": compatible(findings),
        "findings": [f.to_json() for f in findings],
    }
    return json.dumps(doc, indent=2) + "\n"


def to_text(findings: Sequence[Finding], old: Side, new: Side) -> str:
    """One line per finding, then the verdict."""
    lines = [f"{f.severity}: {f.code}: {f.message}" for f in findings]
    verdict = "compatible" if compatible(findings) else "NOT compatible"
    lines.append(f"migration {old.source} -> {new.source}: {verdict}")
    return "\n".join(lines) + "\n"
