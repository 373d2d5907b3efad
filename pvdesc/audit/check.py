"""Audit a layout: can any vCPU's PV_TIME_ST structure collide with what the guest believes?

Pure functions over immutable data: a :class:`~pvdesc.read.dtb.DeviceTree`, a
:class:`~pvdesc.emit.hypervisor.Target` (the region, per-vCPU IPAs, IPA size and,
from a hypervisor config, the memslots), the boot mode and optional ACPI tables in,
a tuple of :class:`~pvdesc.core.findings.Finding` out, rendered here as
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

from collections.abc import Sequence

from pvdesc import kvm
from pvdesc.core.findings import Finding, any_error
from pvdesc.core.model import Boot, Memslot, Target
from pvdesc.core.ranges import Range
from pvdesc.core.units import parse_quantity
from pvdesc.errors import PvdescError
from pvdesc.layout import beliefs
from pvdesc.layout.rules import judge

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true):
#: ``pvdesc check`` starts without json or acpitables (names in annotations only).
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
