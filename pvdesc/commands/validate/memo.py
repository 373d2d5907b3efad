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

The distinct SSDTs' acpiexec runs overlap (:meth:`Memo.evaluating`): each
spends most of its time asleep.

One :class:`Memo` lives for one run: per worker process (a run's workers are
fresh processes that end with it), or per run when it validates in-process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from pvdesc.errors import PvdescError
from pvdesc.tools import acpica, signals, validators
from pvdesc.tools.validators import Evaluation

#: At most this many acpiexec at once (:meth:`Memo.evaluating`).  Each run sleeps ~110 ms
#: as it exits (its debugger thread's shut-down) and uses ~10 ms of CPU: run one at a
#: time, 180 SSDTs kept a worker asleep for 20 s.
WINDOW = 16


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

    @contextlib.contextmanager
    def evaluating(self, ssdts: Iterable[bytes]) -> Iterator[None]:
        """Evaluate every SSDT not known yet, at most :data:`WINDOW` acpiexec at a time.

        The first window's runs start on entering the block and run while it does
        (the other validators); the rest run in windows after it.  Once the block
        is left normally, :meth:`evaluate` knows every one.  Leaving it by an
        exception stops every acpiexec still running and removes its folder.
        """
        todo = list(dict.fromkeys(s for s in ssdts if s not in self.evaluations))
        with contextlib.ExitStack() as stack:

            def start(part: list[bytes]) -> list[tuple[bytes, acpica.Execution | None]]:
                jobs: list[tuple[bytes, acpica.Execution | None]] = []
                for ssdt in part:
                    # Held back until the run is on the stack that stops it (pvdesc.tools.signals).
                    with signals.deferred():
                        try:
                            job: acpica.Execution | None = stack.enter_context(
                                acpica.Execution([ssdt], validators.EVALUATE)
                            )
                        except PvdescError:
                            job = None  # evaluate() meets the same error and answers with it
                    signals.raise_pending()
                    jobs.append((ssdt, job))
                return jobs

            first = start(todo[:WINDOW])
            yield
            for ssdt, job in first:
                self.evaluations[ssdt] = validators.evaluate(ssdt, job)
            for i in range(WINDOW, len(todo), WINDOW):
                for ssdt, job in start(todo[i : i + WINDOW]):
                    self.evaluations[ssdt] = validators.evaluate(ssdt, job)
