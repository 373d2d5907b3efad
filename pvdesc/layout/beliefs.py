"""What the guest's boot consumer believes about its memory: the one model every check uses.

A guest learns its RAM from one consumer of the firmware description, chosen by
the boot mode:

- ``linux-dt``: Linux reads the devicetree itself (:mod:`pvdesc.layout.linux_memory`);
- ``uefi-dt`` and ``uefi-acpi``: EDK2 builds the UEFI memory map from the
  devicetree's memory nodes (:mod:`pvdesc.layout.edk2_memory`), and the OS takes
  its RAM from that map.

:func:`believe` turns a parsed devicetree (:mod:`pvdesc.read.dtb`) and optional ACPI
tables into a :class:`Belief`: the RAM the consumer adds, the reservations it
honours (no-map or mapped), ``/memreserve/`` and the device windows (``reg``
translated, and bus ``ranges`` windows such as a PCI host bridge's MMIO, where
Linux hands out BARs).  :func:`of_parts` gives the same for what pvdesc itself
states about a layout.  :func:`pvdesc.layout.rules.judge` judges a :class:`Belief`,
whatever it came from, so ``layout.verify``, ``check``, ``build --into`` and
``map --dtb`` agree.

Devices are the same for every boot: every other ``reg`` and every non-empty
``ranges`` window, translated by its start address (``of_translate_address``).
Every range is a :class:`~pvdesc.core.ranges.Labelled`: its label names where the
DT (or the layout) said so, e.g. ``/memory@40000000 reg[0]`` or
``/pcie@10000000 ranges[1]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple

from pvdesc.core.model import Boot
from pvdesc.core.ranges import Labelled, Range, difference, merged
from pvdesc.layout.edk2_memory import edk2_ram
from pvdesc.layout.linux_memory import (
    initrd_memory,
    linux_ram,
    linux_reservations,
    usable_range_added,
)

if TYPE_CHECKING:  # only named in annotations: a build never loads libfdt, a check no ACPI parser
    from pvdesc.read.acpitables import AcpiTable
    from pvdesc.read.dtb import DeviceTree, Reservation

LINUX = "Linux"
EDK2 = "EDK2"


class _BeliefFields(NamedTuple):
    """The fields of :class:`Belief`, which documents them."""

    boot: Boot
    consumer: str
    ram: tuple[Labelled, ...]
    no_map: tuple[Labelled, ...] = ()
    mapped: tuple[Labelled, ...] = ()
    refused: tuple[Labelled, ...] = ()
    ignored: tuple[Labelled, ...] = ()
    memreserve: tuple[Labelled, ...] = ()
    devices: tuple[Labelled, ...] = ()
    reserved_ignored: str | None = None
    acpi: tuple[AcpiTable, ...] = ()


class Belief(_BeliefFields):
    """What one boot consumer believes about the guest's address space.

    Attributes:
        boot: the boot mode.
        consumer: who decides (:data:`LINUX` or :data:`EDK2`).
        ram: every range the consumer adds as memory, before reservations.
        no_map: reservations taken out of the linear map (honoured no-map children).
        mapped: reservations that stay mapped (no ``no-map``, or ``reusable``).
        refused: no-map children Linux refuses (``-EBUSY``): the range stays RAM.
        ignored: the DT's no-map children this consumer does not honour (EDK2).
        memreserve: ``/memreserve/`` entries (reserved, still mapped).
        devices: device ``reg`` entries and bus ``ranges`` windows.
        reserved_ignored: why Linux ignores the whole ``/reserved-memory`` node.
        acpi: ACPI tables given with the description (SRAT, SSDT).
    """

    # No __slots__: the instance dict holds what cached_property computes.

    @cached_property
    def usable_ram(self) -> tuple[Range, ...]:
        """RAM the guest may map and allocate: ``ram`` minus the no-map ranges, merged."""
        return tuple(difference(self.ram_ranges, (a.range for a in self.no_map)))

    @cached_property
    def ram_ranges(self) -> tuple[Range, ...]:
        """``ram`` merged into disjoint ranges."""
        return tuple(merged(a.range for a in self.ram if a.range.size > 0))


def _devices(tree: DeviceTree) -> tuple[Labelled, ...]:
    return tuple(Labelled(e.range, e.source) for e in (*tree.devices, *tree.windows))


def believe(tree: DeviceTree, boot: Boot, acpi: Sequence[AcpiTable] = ()) -> Belief:
    """What the consumer of ``boot`` believes about this devicetree (see the module doc)."""
    memreserve = tuple(Labelled(m.range, m.source) for m in tree.memreserve)
    if boot.uefi:
        ignored = () if tree.reserved_ignored is not None else _withheld(tree.reserved)
        uefi_ram = edk2_ram(tree)
        if boot is Boot.UEFI_DT:
            # The OS reads the DT's /chosen after taking RAM from the UEFI map.
            rd = initrd_memory(tree, uefi_ram)
            uefi_ram += usable_range_added(tree) + ([rd] if rd else [])
        return Belief(
            boot=boot,
            consumer=EDK2,
            ram=tuple(uefi_ram),
            ignored=ignored,
            memreserve=memreserve,
            devices=_devices(tree),
            reserved_ignored=tree.reserved_ignored,
            acpi=tuple(acpi),
        )
    ram = linux_ram(tree)
    rd = initrd_memory(tree, ram)
    no_map, mapped, refused = linux_reservations(tree, ram + ([rd] if rd else []), rd)
    ram += [rd] if rd else []
    return Belief(
        boot=boot,
        consumer=LINUX,
        ram=tuple(ram),
        no_map=tuple(no_map),
        mapped=tuple(mapped),
        refused=tuple(refused),
        memreserve=memreserve,
        devices=_devices(tree),
        reserved_ignored=tree.reserved_ignored,
        acpi=tuple(acpi),
    )


def _withheld(reserved: Iterable[Reservation]) -> tuple[Labelled, ...]:
    return tuple(Labelled(r.range, r.source) for r in reserved if r.withheld and r.range.size > 0)


def of_parts(
    boot: Boot,
    memory: Iterable[Labelled],
    reserved: Iterable[Labelled],
    devices: Iterable[Labelled],
) -> Belief:
    """A belief from what pvdesc itself states: root ``/memory`` ranges, no-map children, devices.

    This is the tree :mod:`pvdesc.emit.devicetree` emits for a layout (root memory nodes, a
    ``/reserved-memory`` with the root's cells and ``ranges``, no-map children), so
    both consumers read it the same way; only the no-map children differ by boot.
    """
    ram = tuple(m for m in memory if m.range.size > 0)
    holes = tuple(r for r in reserved if r.range.size > 0)
    return Belief(
        boot=boot,
        consumer=EDK2 if boot.uefi else LINUX,
        ram=ram,
        no_map=() if boot.uefi else holes,
        ignored=holes if boot.uefi else (),
        devices=tuple(devices),
    )


__all__ = [
    "EDK2",
    "LINUX",
    "Belief",
    "believe",
    "difference",
    "of_parts",
]
