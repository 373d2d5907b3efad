"""ACPICA's answers kept for one run, by table: each distinct table is compiled and validated once.

iasl's round trip (:func:`pvdesc.tools.validators.round_trip_faults`) and acpiexec
(:func:`pvdesc.tools.validators.evaluate`) run on a table under a fixed file name
in a fresh temporary directory, so what they answer is a pure function of the
table's bytes (and of the installed tools, which a run does not change).  The
tables carry no VM name, so a fleet's descriptions often share them byte for
byte: a fleet of 1,000 generated from 16 examples has about 300 AML tables and
a handful of distinct ones.  Each distinct table's answer is computed once and
reused; the description-specific parts (the file name that prefixes each
message, the region ``_CRS`` must claim) are applied afterwards, exactly as for
a table run alone, so a report is byte for byte what it was without the memo.

The build's own compilations are kept the same way, by ASL text
(:mod:`pvdesc.emit.compiled`): a description's tables are compiled by iasl only
when no description before it in the run rendered the same text.

One :class:`Memo` lives for one run: per worker process (a run's workers are
fresh processes that end with it), or per run when it validates in-process.
"""

from __future__ import annotations

from pvdesc.tools import validators
from pvdesc.tools.validators import Evaluation


class Memo:
    """The round-trip faults and acpiexec answers found so far in this run, by table bytes.

    Attributes:
        round_trips: table bytes -> :func:`~pvdesc.tools.validators.round_trip_faults`.
        evaluations: SSDT bytes -> :func:`~pvdesc.tools.validators.evaluate`.
        compiled: the build's compilations (:func:`pvdesc.emit.compiled.remembering`).
    """

    __slots__ = ("compiled", "evaluations", "round_trips")

    def __init__(self) -> None:
        self.round_trips: dict[bytes, list[str]] = {}
        self.evaluations: dict[bytes, Evaluation] = {}
        self.compiled: dict[tuple[str, str, str], bytes] = {}

    def round_trip(self, aml: bytes) -> list[str]:
        """:func:`~pvdesc.tools.validators.round_trip_faults` of ``aml``, run once per table."""
        faults = self.round_trips.get(aml)
        if faults is None:
            faults = self.round_trips[aml] = validators.round_trip_faults(aml)
        return faults

    def evaluate(self, ssdt: bytes) -> Evaluation:
        """:func:`~pvdesc.tools.validators.evaluate` of ``ssdt``, run once per table."""
        answer = self.evaluations.get(ssdt)
        if answer is None:
            answer = self.evaluations[ssdt] = validators.evaluate(ssdt)
        return answer
