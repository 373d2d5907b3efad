"""``pvdesc profiles``: each VMM profile's version, source and fixed memory map, text or JSON."""

from __future__ import annotations

from typing import NamedTuple

from pvdesc.core.units import human
from pvdesc.description.profiles import versions
from pvdesc.description.vmm_profile import Profile
from pvdesc.description.vmms import PROFILES

#: ``pvdesc profiles --format json``'s format.
LIST_FORMAT = "pvdesc.profiles/1"


class MapRow(NamedTuple):
    """One range of a profile's memory map, as ``pvdesc profiles`` lists it.

    Attributes:
        kind: ``stolen-time``, ``ram`` or ``mmio``.
        name: the VMM's own name for it.
        base: first address.
        size: bytes (``None``: RAM, whose size the description gives).
        confirmed: False where pvdesc could not pin the value down upstream.
    """

    kind: str
    name: str
    base: int
    size: int | None
    confirmed: bool = True


def map_rows(p: Profile) -> tuple[MapRow, ...]:
    """A profile's fixed memory map, in address order (RAM with its base only)."""
    rows = [MapRow("mmio", e.name, e.base, e.size, e.confirmed) for e in p.memmap]
    if p.stolen_time is not None:
        st = p.stolen_time
        rows.append(MapRow("stolen-time", st.name, st.base, st.size, st.confirmed))
    if p.system_memory is not None:
        rows.append(
            MapRow(
                "stolen-time",
                "system memory (holds it)",
                p.system_memory.base,
                p.system_memory.size,
            )
        )
    if p.ram_base is not None:
        rows.append(MapRow("ram", "ram", p.ram_base, None))
    return tuple(sorted(rows, key=lambda r: (r.base, r.kind)))


def listing() -> tuple[tuple[Profile, bool], ...]:
    """Every profile pvdesc knows, each VMM's default first: ``(profile, is_default)``."""
    return tuple((p, i == 0) for vmm in PROFILES for i, p in enumerate(versions(vmm)))


def to_json() -> str:
    """``pvdesc profiles --format json``."""
    import json

    doc = {
        "format": LIST_FORMAT,
        "profiles": [
            {
                "vmm": p.vmm.value,
                "version": p.version,
                "version_text": p.version_text,
                "default": default,
                "supported": p.unsupported is None,
                "upstream": p.upstream,
                "region_rule": str(p.size_rule),
                "memory_map": [
                    {
                        "kind": r.kind,
                        "name": r.name,
                        "base": r.base,
                        "size": r.size,
                        "confirmed": r.confirmed,
                    }
                    for r in map_rows(p)
                ],
            }
            for p, default in listing()
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def _size(size: int | None) -> str:
    return "(size from the description)" if size is None else f"{size:#010x}  {human(size)}"


def to_text() -> str:
    """``pvdesc profiles``: each profile's version, source and memory map."""
    lines: list[str] = []
    for p, default in listing():
        pick = "default" if default else f"vmm_version: {p.version}"
        head = f"{p.vmm.value}  {p.version_text or '-'}  ({pick})"
        lines.append(head)
        if p.unsupported is not None:
            lines.append(f"  unsupported: {p.unsupported}")
        elif not p.version:
            lines.append("  pvdesc places the region (hole, carve or fixed): no fixed map")
        else:
            lines.append(f"  source: {p.upstream}")
        for r in map_rows(p):
            mark = "" if r.confirmed else "  (unconfirmed)"
            lines.append(f"  {r.kind:<11}  {r.name:<24}  {r.base:#012x}  {_size(r.size)}{mark}")
        lines.append("")
    return "\n".join(lines)
