"""Reading the ``_CRS`` resources acpiexec prints: the memory ranges an SSDT's device claims."""

from __future__ import annotations

import re

from pvdesc.core.ranges import Range

_DESCRIPTOR_RE = re.compile(r"^\[\d+\] (?P<kind>.+?)\s*$", re.MULTILINE)
_FIELD_RE = re.compile(r"^\s*(?P<label>[A-Za-z/ ]+?)\s*:\s*(?P<value>.*?)\s*$", re.MULTILINE)


def crs_claims(output: str) -> tuple[list[Range], list[str]]:
    """The memory ranges acpiexec's ``resources`` printed for ``_CRS``, and any oddities.

    Handles the two descriptors pvdesc emits (``Memory32Fixed``, ``QWordMemory``)
    and the DWORD form; a QWORD/DWORD descriptor must be a ResourceConsumer.
    """
    if "Evaluating _CRS" not in output:
        return [], ["acpiexec printed no _CRS"]
    crs = output.split("Evaluating _CRS", 1)[1].split("Resource Conversion", 1)[0]
    ranges: list[Range] = []
    odd: list[str] = []
    marks = list(_DESCRIPTOR_RE.finditer(crs))
    for i, mark in enumerate(marks):
        kind = mark["kind"]
        body = crs[mark.end() : marks[i + 1].start() if i + 1 < len(marks) else len(crs)]
        fields = {m["label"]: m["value"] for m in _FIELD_RE.finditer(body)}
        try:
            if kind == "EndTag Resource":
                continue
            if kind == "32-Bit Fixed Memory Range Resource":
                ranges.append(Range(int(fields["Address"], 16), int(fields["Address Length"], 16)))
            elif kind in (
                "64-Bit QWORD Address Space Resource",
                "32-Bit DWORD Address Space Resource",
            ):
                if fields.get("Resource Type") != "Memory Range":
                    odd.append(f"{kind} of type {fields.get('Resource Type')}")
                    continue
                if fields.get("Consumer/Producer") != "ResourceConsumer":
                    odd.append(f"{kind} is a {fields.get('Consumer/Producer')}, not a consumer")
                ranges.append(
                    Range(int(fields["Address Minimum"], 16), int(fields["Address Length"], 16))
                )
            else:
                odd.append(f"unexpected descriptor {kind!r}")
        except (KeyError, ValueError):
            odd.append(f"{kind} without a readable address and length")
    return ranges, odd
