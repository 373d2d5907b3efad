"""Decode ``reg``/``ranges`` cells and translate them to the root's address space, as Linux does.

DT spec §2.3.5-§2.3.8, and Linux's ``drivers/of/address.c``:

- a ``reg`` is decoded with the *direct parent's* ``#address-cells`` /
  ``#size-cells`` (not inherited; defaults 2/1);
- numbers keep their low 64 bits (``of_read_number``, include/linux/of.h);
- a ``reg`` is translated through each ancestor's ``ranges``: an empty ``ranges``
  is the identity, a missing one means the bus is not memory-mapped (``/cpus``,
  I2C, ...) and the node is :class:`Skipped` with the reason instead;
- a parent with ``#size-cells = <0>`` has children whose ``reg`` carries no size
  (CPU MPIDRs): those are skipped with the reason too;
- translation looks up an entry's *start* address in each window, as
  ``oftranslate_address`` does (``of_bus_default_map``), so an entry that
  straddles a window's end still exists; bus-specific matching (PCI's ``phys.hi``
  space bits, as ``of_bus_pci_map``) is not modelled beyond dropping the bits
  above 64.

Work is bounded (:class:`Budget`), so a hostile blob is refused rather than
slowing to a crawl: at most :data:`MAX_ENTRIES` decoded ``reg``/``ranges`` entries
in all, and at most :data:`MAX_TRANSLATION_STEPS` window comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from pvdesc.core.ranges import Range
from pvdesc.read.fdt_blob import err

#: ``reg`` entries plus ``ranges`` windows in the whole tree (QEMU virt has about 100).
MAX_ENTRIES = 1_000_000
#: ``ranges`` window comparisons while translating every entry to root addresses.
MAX_TRANSLATION_STEPS = 5_000_000
#: Linux's ``of_read_number`` (include/linux/of.h) accumulates cells into a u64: wider
#: numbers keep their low 64 bits.
MASK64 = (1 << 64) - 1


class Skipped(NamedTuple):
    """A node whose ``reg`` is not a CPU-physical range, and why.

    Attributes:
        path: the node's full path.
        reason: e.g. "parent /cpus has no ranges: not memory-mapped".
    """

    path: str
    reason: str


class Budget(NamedTuple):
    """Counters that bound the work on one blob (mutable cells in a frozen holder).

    Attributes:
        file: the blob's name, for the refusal.
        entries: decoded ``reg``/``ranges`` entries so far (one-element list).
        steps: window comparisons so far (one-element list).
    """

    file: str
    entries: list[int]
    steps: list[int]

    def take_entries(self, n: int) -> None:
        self.entries[0] += n
        if self.entries[0] > MAX_ENTRIES:
            raise err(
                self.file,
                f"more than {MAX_ENTRIES} reg/ranges entries: refusing to audit a tree this large",
            )

    def take_steps(self, n: int) -> None:
        self.steps[0] += n
        if self.steps[0] > MAX_TRANSLATION_STEPS:
            raise err(
                self.file,
                f"translating reg through ranges takes more than {MAX_TRANSLATION_STEPS} steps: "
                "refusing a tree this complex",
            )


class Bus(NamedTuple):
    """What a node's children need: its cells and how to reach the root.

    Attributes:
        path: the node's path.
        address_cells: the node's ``#address-cells`` (for its children).
        size_cells: the node's ``#size-cells``.
        ranges: ``None`` if its children's addresses are not translatable to the
            root, else the windows (child base, parent base, size) into the parent's
            space, ``()`` for the identity (empty ``ranges``, or the root).
        parent: the parent's bus (``None`` for the root).
        why_not: the reason when ``ranges`` is ``None``.
    """

    path: str
    address_cells: int
    size_cells: int
    ranges: tuple[tuple[int, int, int], ...] | None
    parent: Bus | None
    why_not: str = ""


def int_cells(data: bytes, start: int, n: int) -> int:
    """``n`` big-endian cells as Linux reads them: the low 64 bits (``of_read_number``)."""
    return int.from_bytes(data[start : start + 4 * n], "big") & MASK64


def lenient_pairs(raw: bytes, ac: int, sc: int) -> list[tuple[int, int]]:
    """(address, size) pairs while a whole pair remains (``early_init_dt_scan_memory``'s loop)."""
    width = 4 * (ac + sc)
    if width == 0:
        return []
    return [
        (int_cells(raw, pos, ac), int_cells(raw, pos + 4 * ac, sc))
        for pos in range(0, len(raw) - width + 1, width)
    ]


def translate(bus: Bus, addr: int, budget: Budget) -> int | None:
    """``addr`` (in ``bus``'s child space) as a root address, or ``None`` if unmapped.

    As Linux's ``oftranslate_address`` (drivers/of/address.c): at each level the
    *start* address is looked up (``of_bus_default_map``: ``da`` in
    ``[cp, cp + s)``), so an entry straddling a window's end still translates;
    the result keeps the low 64 bits (``of_bus_defaulttranslate``).
    """
    node: Bus | None = bus
    while node is not None and node.parent is not None:
        if node.ranges is None:
            return None
        if node.ranges:
            budget.take_steps(len(node.ranges))
            for child, parent, length in node.ranges:
                if child <= addr < child + length:
                    addr = (parent + (addr - child)) & MASK64
                    break
            else:
                return None
        node = node.parent
    return addr


def decode_ranges(
    file: str, path: str, raw: bytes, child_ac: int, parent_ac: int, sc: int, budget: Budget
) -> tuple[tuple[int, int, int], ...]:
    """A ``ranges`` property's windows: ``(child base, parent base, size)`` each."""
    # (child-bus-address, parent-bus-address, length): the child's #address-cells,
    # the parent's #address-cells, the child's #size-cells (DT spec §2.3.8).
    width = 4 * (child_ac + parent_ac + sc)
    if width == 0 or len(raw) % width:
        raise err(
            file,
            f"{path}: ranges is {len(raw)} bytes, not a multiple of "
            f"({child_ac}+{parent_ac}+{sc}) cells",
        )
    budget.take_entries(len(raw) // width)
    out = []
    for pos in range(0, len(raw), width):
        child = int_cells(raw, pos, child_ac)
        parent = int_cells(raw, pos + 4 * child_ac, parent_ac)
        length = int_cells(raw, pos + 4 * (child_ac + parent_ac), sc)
        out.append((child, parent, length))
    return tuple(out)


def decode_reg(
    file: str, path: str, raw: bytes, parent: Bus, skipped: list[Skipped], budget: Budget
) -> Sequence[tuple[int, Range]]:
    """A ``reg``'s non-empty entries, translated: ``(index, range)``; others go to ``skipped``."""
    ac, sc = parent.address_cells, parent.size_cells
    if sc == 0 or ac == 0:
        skipped.append(
            Skipped(path, f"parent {parent.path} has #address-cells/#size-cells {ac}/{sc}")
        )
        return ()
    width = 4 * (ac + sc)
    if not raw or len(raw) % width:
        raise err(
            file,
            f"{path}: reg is {len(raw)} bytes, not a multiple of {ac}+{sc} cells "
            f"(the parent's #address-cells/#size-cells)",
        )
    if parent.ranges is None:
        skipped.append(Skipped(path, parent.why_not))
        return ()
    budget.take_entries(len(raw) // width)
    out = []
    mid = 4 * ac
    for pos in range(0, len(raw), width):
        # int_cells(raw, pos, ac) and int_cells(raw, pos + mid, sc), without two calls each
        addr = int.from_bytes(raw[pos : pos + mid], "big") & MASK64
        size = int.from_bytes(raw[pos + mid : pos + width], "big") & MASK64
        if size == 0:
            continue
        translated = addr if parent.parent is None else translate(parent, addr, budget)
        if translated is None:
            skipped.append(
                Skipped(
                    path, f"reg[{pos // width}] {addr:#x} lies in no window of a parent's ranges"
                )
            )
            continue
        out.append((pos // width, Range(translated, size)))
    return out
