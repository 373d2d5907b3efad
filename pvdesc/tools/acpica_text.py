"""What ACPICA's ``iasl`` and ``acpiexec`` print, read back (:mod:`pvdesc.tools.acpica` runs them).

- iasl's ``-vi`` messages, ``file(line) : error NNNN - text`` (:func:`parse_diagnostics`);
- acpiexec's failures (:func:`failures`): it exits 0 even when an evaluation
  fails, so its output is searched for ``failed with status``, ``ACPI Error``,
  ``Firmware Error`` and ``Firmware Warning`` (docs/acpi.md §4.4);
- acpiexec's resource-conversion trace lines, noise to drop (:func:`is_trace`).

**One stray newline.**  Run interactively, acpiexec starts its command thread
(``AcpiDbExecuteThread``, ``dbinput.c``) while loading the tables, and that
thread's first act, ``AcpiOsPrintf ("\\n")`` in ``AcpiDbUserCommands``, lands
anywhere in what the main thread prints until the first command runs.  The
main thread prints an ACPICA message in three calls (``AcpiBiosWarning`` in
``utxferror.c``: the prefix ``Firmware Warning (ACPI): ``, the message, then
``ACPI_MSG_SUFFIX`` `` (20200925/tbprint-234)`` and the newline), so the stray
newline can split a message after its prefix or before its suffix: about 1 run
in 250 on 2 busy cores.  :func:`failures` joins such a message back, so what a
report quotes never depends on how the threads were scheduled.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: ``-vi`` diagnostics: ``ssdt.asl(16) : error    6126 - syntax error`` (docs/acpi.md §4.3).
_DIAG_RE = re.compile(
    r"^(?P<file>[^()\s]+)\((?P<line>\d+)\)\s*:\s*(?P<level>error|warning|remark)\s+"
    r"(?P<code>\d+)\s*-\s*(?P<text>.*)$",
    re.IGNORECASE,
)
#: Markers of a failure in acpiexec's output (it exits 0 regardless, docs/acpi.md §4.4).
ACPIEXEC_FAILURES = ("failed with status", "ACPI Error", "Firmware Error", "Firmware Warning")
#: The markers that open an ACPICA message (``acutils.h``), which always ends in :data:`_SUFFIX_RE`.
_MESSAGE_PREFIXES = ("ACPI Error: ", "Firmware Error (ACPI): ", "Firmware Warning (ACPI): ")
#: ``ACPI_MSG_SUFFIX``: `` (%8.8X/%s-%u)``, ACPICA's version, module and line.
_SUFFIX_RE = re.compile(r" \([0-9A-Fa-f]{8}/[\w.]+-\d+\)$")
#: acpiexec's resource-conversion trace lines (noise on stdout, docs/acpi.md §4.4).
_TRACE_RE = re.compile(r"^\s*(rscalc|rslist|rsdump|rsxface)-\d+", re.IGNORECASE)


class Diagnostic(NamedTuple):
    """One iasl message.

    Attributes:
        line: the ASL source line (1-based).
        level: ``error``, ``warning`` or ``remark``.
        code: iasl's message number (e.g. 6126).
        text: the message text.
    """

    line: int
    level: str
    code: int
    text: str


def parse_diagnostics(text: str) -> list[Diagnostic]:
    """The ``-vi`` style messages in iasl's output, in order."""
    out = []
    for raw in text.splitlines():
        m = _DIAG_RE.match(raw.strip())
        if m:
            out.append(
                Diagnostic(int(m["line"]), m["level"].lower(), int(m["code"]), m["text"].strip())
            )
    return out


def is_trace(line: str) -> bool:
    """Whether ``line`` is one of acpiexec's resource-conversion trace lines."""
    return _TRACE_RE.match(line) is not None


def failures(text: str) -> list[str]:
    """The failure lines of an ACPICA tool's output, in order, each stripped.

    An ACPICA message split by acpiexec's stray newline (module doc) is joined
    back: a line holding a message prefix but not the suffix, followed by the
    line that completes it.
    """
    lines = text.splitlines()
    out: list[str] = []
    skip = False
    for i, line in enumerate(lines):
        if skip:
            skip = False
            continue
        if not any(m in line for m in ACPIEXEC_FAILURES):
            continue
        if (
            any(p in line for p in _MESSAGE_PREFIXES)
            and not _SUFFIX_RE.search(line.rstrip())
            and i + 1 < len(lines)
            and _SUFFIX_RE.search((line + lines[i + 1]).rstrip())
        ):
            line, skip = line + lines[i + 1], True
        out.append(line.strip())
    return out
