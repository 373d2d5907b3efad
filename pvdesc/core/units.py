"""Sizes and quantities: parsing what a description writes, printing what pvdesc reports.

One place for each direction: :func:`parse_quantity` reads ``64K``, ``0x1000`` or
``4096`` as the schema allows; :func:`human` prints a byte count in the largest
binary unit that divides it exactly.
"""

from __future__ import annotations

import re

from pvdesc.errors import short


def human(size: int) -> str:
    """A byte count in the largest binary unit that divides it exactly (``64 KiB``)."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
#: Every number in a description (address, size, count, id) is below 2**64.
MAX_QUANTITY_BITS = 64
# Anchored with fullmatch: "$" would also accept a trailing newline.  At most 20
# significant decimal or 16 hex digits (after leading zeros): 2**64 needs 20.
_QUANTITY_RE = re.compile(r"0[xX]0*[0-9a-fA-F]{1,16}|0*[0-9]{1,20}[KMGT]?")


def parse_quantity(value: int | str) -> int:
    """An integer, or ``"0x.."``/decimal text with an optional binary K/M/G/T suffix.

    Raises ``ValueError`` for anything else, and for values of 2**64 or more.
    """
    if isinstance(value, int):
        result = value
    elif not _QUANTITY_RE.fullmatch(value):
        raise ValueError(
            f'not a size or address: {short(value)} (an integer below 2^64, "0x...", or '
            "digits with K/M/G/T)"
        )
    elif value[:2].lower() == "0x":
        result = int(value, 16)
    elif value[-1] in _SUFFIX:
        result = int(value[:-1]) * _SUFFIX[value[-1]]
    else:
        result = int(value)
    if result >= 1 << MAX_QUANTITY_BITS:
        raise ValueError(f"{short(value)} is 2^64 or more: addresses and sizes are 64-bit")
    return result


_UNITS = (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10), ("B", 0))
#: A count stays short below this (``15744 KiB`` is not: ``15 MiB + 384 KiB`` is).
_SHORT_COUNT = 10000


def _exact(size: int) -> str | None:
    """``N unit`` in the largest unit that divides ``size`` with a short ``N``, if any."""
    for unit, shift in _UNITS:
        if size >= 1 << shift and size % (1 << shift) == 0 and size >> shift < _SHORT_COUNT:
            return f"{size >> shift} {unit}"
    return None


def size_text(size: int) -> str:
    """A size, exactly: ``64 KiB``; else ``8 GiB - 64 KiB`` (a whole unit and an exact rest,
    the smaller rest of the two around it); else hex (``0x1fffefff1 B``).

    A short count in the largest unit that divides the size exactly wins (``1536 MiB``).
    """
    if size <= 0:
        return f"{size} B"
    exact = _exact(size)
    if exact is not None:
        return exact
    for unit, shift in _UNITS[:-1]:
        step = 1 << shift
        if size < step:
            continue
        if size % step == 0:  # exact, with a long count (beyond 10000 TiB)
            return f"{size >> shift} {unit}"
        below = size - size % step
        found = []
        for rest, head in (
            (size - below, f"{below >> shift} {unit} + "),
            (below + step - size, f"{(below + step) >> shift} {unit} - "),
        ):
            text = _exact(rest)
            if text is not None:
                found.append((rest, "+" in head, head + text))
        if found:  # the smaller rest; on a tie, from above (``64 KiB - 512 B``)
            return min(found)[2]
        break
    return f"{size:#x} B"


def vcpus_text(first: int, last: int) -> str:
    """``vCPU 3`` or ``vCPUs 3-7``: a run of consecutive vCPU ids in a message."""
    return f"vCPU {first}" if first == last else f"vCPUs {first}-{last}"
