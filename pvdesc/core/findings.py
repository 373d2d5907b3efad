"""What an audit reports: one :class:`Severity` scale and one :class:`Finding` type.

``check``, ``diff``, ``map`` and ``validate`` all report :class:`Finding` values;
each command's own output format (``pvdesc.check/1``, ``pvdesc.diff/1``, the map's
list) is a rendering of them, written where the command is.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import NamedTuple

from pvdesc.core.ranges import Range


class Severity(enum.StrEnum):
    """How bad a finding is; any error makes the verdict unsafe."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Sort key of reports: errors first, then warnings, then information."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


class Finding(NamedTuple):
    """One thing an audit found.

    Attributes:
        severity: error, warning or info; any error makes the verdict unsafe (or, for
            ``diff``, the two sides incompatible).
        code: a stable identifier, documented by the command that reports it.
        message: what is wrong, why it matters, and the remedy.
        range: the guest-physical addresses concerned, or ``None`` when the finding
            is not about one range (a revision mismatch in ``diff``).
        source: where it came from: a DT node and ``reg`` index, an ACPI table entry,
            the hypervisor config; empty when the finding is about the whole layout.
    """

    severity: Severity
    code: str
    message: str
    range: Range | None = None
    source: str = ""

    def sort_key(self) -> tuple[int, int, str]:
        """The order of a report: errors first, then by first address (none first), then code."""
        return (self.severity.rank, -1 if self.range is None else self.range.base, self.code)


def any_error(findings: Iterable[Finding]) -> bool:
    """True iff any finding is an error: ``check``'s unsafe, ``diff``'s not compatible."""
    return any(f.severity is Severity.ERROR for f in findings)
