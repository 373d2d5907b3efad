"""Audit a layout: can any vCPU's PV_TIME_ST structure collide with what the guest believes?

Pure functions over immutable data: a :class:`~pvdesc.read.dtb.DeviceTree`, a
:class:`Target` (the region, per-vCPU IPAs, IPA size and, from a hypervisor
config, the memslots), the boot mode and optional ACPI tables in, a tuple of
:class:`Finding` out.  The verdict is ``unsafe`` iff any finding is an error.

:func:`check` asks :func:`pvdesc.layout.beliefs.believe` what the boot mode's consumer
(Linux, or EDK2 building the UEFI map) believes about the tree, then
:func:`judge` applies the one set of rules below.  ``layout.verify``, ``build
--into``, ``map --dtb`` and :func:`check_ipas` (IPAs reported by KVM) use
:func:`judge` too, so they cannot drift apart.
Reading files is left to the callers (:mod:`pvdesc.read.dtb`, :mod:`pvdesc.read.acpitables`,
the CLI).

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

from collections.abc import Sequence
from dataclasses import dataclass

from pvdesc import kvm
from pvdesc.audit.findings import Severity
from pvdesc.core.model import Boot
from pvdesc.core.ranges import Range
from pvdesc.core.units import parse_quantity
from pvdesc.errors import PvdescError
from pvdesc.layout import beliefs
from pvdesc.tools.inputs import too_big

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
#: A hypervisor config for 512 vCPUs is ~40 KiB; refuse anything much larger.
MAX_CONFIG_BYTES = 4 << 20
#: Memslots a hypervisor config may list: KVM's slot ids are below SHRT_MAX
#: (``KVM_MEM_SLOTS_NUM``, include/linux/kvm_host.h), so a longer list is not a real VM's.
MAX_CONFIG_MEMSLOTS = 1 << 15


class CheckInputError(PvdescError):
    """``--hypervisor-config`` or ``--region``/``--vcpus`` cannot be used."""


@dataclass(frozen=True)
class Finding:
    """One thing ``pvdesc check`` found.

    Attributes:
        severity: error, warning or info.
        code: a stable identifier (see the module docstring).
        message: what is wrong and the remedy.
        range: the addresses concerned (half-open).
        source: where it came from: a DT node and ``reg`` index, an ACPI table
            entry, or the hypervisor config.
    """

    severity: Severity
    code: str
    message: str
    range: Range
    source: str

    def to_json(self) -> dict[str, Any]:
        """The ``pvdesc.check/1`` JSON object."""
        return {
            "severity": str(self.severity),
            "code": self.code,
            "message": self.message,
            "range": [self.range.base, self.range.end],
            "source": self.source,
        }


@dataclass(frozen=True)
class Memslot:
    """A memslot from the hypervisor config.

    Attributes:
        slot: its number.
        range: guest_phys_addr and memory_size.
        purpose: ``ram`` or ``stolen-time`` as written.
    """

    slot: int
    range: Range
    purpose: str


@dataclass(frozen=True)
class Target:
    """What the hypervisor will program.

    Attributes:
        region: the stolen-time region.
        vcpu_ipas: ``(vcpu id, PVTIME_IPA)`` for every possible vCPU.
        ipa_bits: the guest's IPA size.
        memslots: the memslots, or ``None`` when unknown (``--region``).
        source: where it came from (the config file, or ``--region``).
    """

    region: Range
    vcpu_ipas: tuple[tuple[int, int], ...]
    ipa_bits: int
    memslots: tuple[Memslot, ...] | None
    source: str


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


def config_int(data: Any, key: str, file: str, where: str) -> int:
    """``data[key]`` of a hypervisor config, a non-negative integer, else an error at ``file``."""
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckInputError(f"{where}.{key} must be a non-negative integer", file)
    return value


#: What a memslot of a hypervisor config may back (pvdesc.layout.Purpose).
PURPOSES = ("ram", "stolen-time")


def _purpose(data: Any, file: str, where: str) -> str:
    value = data.get("purpose") if isinstance(data, dict) else None
    if value not in PURPOSES:
        raise CheckInputError(f'{where}.purpose must be "ram" or "stolen-time"', file)
    return str(value)


def target_from_config(text: bytes, file: str) -> Target:
    """A ``pvdesc.hypervisor/1`` config (pvdesc/emit/hypervisor.py), validated field by field."""
    return target_from_data(config_data(text, file), file)


def config_data(text: bytes, file: str) -> dict[str, Any]:
    """A hypervisor config's JSON object (size, syntax and ``format`` checked)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise CheckInputError(too_big(len(text), MAX_CONFIG_BYTES, "hypervisor configs"), file)
    import json

    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckInputError(f"not JSON: {str(exc).splitlines()[0]}", file) from None
    if not isinstance(data, dict) or data.get("format") != "pvdesc.hypervisor/1":
        raise CheckInputError(
            'not a hypervisor config: "format" is not "pvdesc.hypervisor/1"', file
        )
    return data


def target_from_data(data: dict[str, Any], file: str) -> Target:
    """:func:`target_from_config` for the config's parsed JSON object (:func:`config_data`)."""
    ipa_bits = config_int(data, "ipa_bits", file, "config")
    if not kvm.IPA_BITS_MIN <= ipa_bits <= kvm.IPA_BITS_MAX:
        raise CheckInputError(f"ipa_bits {ipa_bits} is not {kvm.IPA_BITS_MIN}..52", file)
    st = data.get("stolen_time")
    region = Range(
        config_int(st, "base", file, "stolen_time"), config_int(st, "size", file, "stolen_time")
    )
    raw_slots = data.get("memslots")
    raw_vcpus = data.get("vcpus")
    if not isinstance(raw_slots, list) or not isinstance(raw_vcpus, list) or not raw_vcpus:
        raise CheckInputError("memslots and vcpus must be non-empty lists", file)
    if len(raw_vcpus) > kvm.KVM_MAX_VCPUS or len(raw_slots) > MAX_CONFIG_MEMSLOTS:
        raise CheckInputError(
            f"too many vcpus or memslots ({len(raw_vcpus)} vcpus, {len(raw_slots)} memslots): "
            f"hypervisor configs are limited to {kvm.KVM_MAX_VCPUS} vcpus (KVM_MAX_VCPUS) and "
            f"{MAX_CONFIG_MEMSLOTS} memslots",
            file,
        )
    slots = tuple(
        Memslot(
            config_int(s, "slot", file, f"memslots[{i}]"),
            Range(
                config_int(s, "guest_phys_addr", file, f"memslots[{i}]"),
                config_int(s, "memory_size", file, f"memslots[{i}]"),
            ),
            _purpose(s, file, f"memslots[{i}]"),
        )
        for i, s in enumerate(raw_slots)
    )
    ipas = tuple(
        (config_int(v, "id", file, f"vcpus[{i}]"), config_int(v, "pvtime_ipa", file, f"vcpus[{i}]"))
        for i, v in enumerate(raw_vcpus)
    )
    return Target(region, ipas, ipa_bits, slots, file)


# --------------------------------------------------------------------------- sweep


def vcpus_text(first: int, last: int) -> str:
    """``vCPU 3`` or ``vCPUs 3-7``: a run of consecutive vCPU ids in a message."""
    return f"vCPU {first}" if first == last else f"vCPUs {first}-{last}"


def check(
    dt: DeviceTree,
    target: Target,
    boot: Boot = Boot.LINUX_DT,
    acpi: Sequence[AcpiTable] = (),
) -> tuple[Finding, ...]:
    """Every finding for this DTB, target, boot mode and ACPI tables, errors first."""
    from pvdesc.layout.rules import judge  # here, not above: the rules import this module

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
    return any(f.severity is Severity.ERROR for f in findings)


def verdict(findings: Sequence[Finding]) -> str:
    """``safe`` or ``unsafe``."""
    return "unsafe" if unsafe(findings) else "safe"


def to_json(findings: Sequence[Finding]) -> str:
    """The ``pvdesc.check/1`` document."""
    import json

    doc = {
        "format": FORMAT,
        "verdict": verdict(findings),
        "findings": [f.to_json() for f in findings],
    }
    return json.dumps(doc, indent=2) + "\n"


def to_text(findings: Sequence[Finding]) -> str:
    """One line per finding, then the verdict."""
    lines = [f"{f.severity}: {f.code}: {f.source}: [{f.range}] {f.message}" for f in findings]
    lines.append(f"verdict: {verdict(findings)}")
    return "\n".join(lines) + "\n"
