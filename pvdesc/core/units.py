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
