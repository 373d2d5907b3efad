"""The ACPI validators run once per distinct table in a run, and every answer stays its own.

A fleet's descriptions share SSDTs and SRATs byte for byte (the tables carry no VM
name), so ``pvdesc validate`` runs the iasl round trip and acpiexec once per
distinct table (:mod:`pvdesc.commands.validate.memo`).  These tests check that
this saves the runs and changes no report: a corrupt SSDT in the middle of a
fleet of identical ones is reported against its own description, under its own
file name, exactly as when every description is validated on its own.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from helpers import ROOT, all_reports, alter_outputs, checksum_broken, example_ssdt

from pvdesc.commands.validate import chunk, memo
from pvdesc.commands.validate import fleet as validate
from pvdesc.commands.validate.results import Externals
from pvdesc.core.ranges import Range
from pvdesc.tools import acpica, validators
from pvdesc.tools.validators import Evaluation, Validator

ACPI_HOLE = ROOT / "examples" / "uefi-acpi-hole.yaml"
ACPI_NUMA = ROOT / "examples" / "uefi-acpi-numa.yaml"
ACPI_NUMA4 = ROOT / "examples" / "numa-4node-acpi.yaml"
ACPI_ONLY = Externals("on", (Validator.IASL, Validator.ACPIEXEC), (), None)


def _copies(dest: Path, source: Path, n: int) -> list[str]:
    """``n`` copies of ``source``, each under its own VM name (the tables stay identical)."""
    dest.mkdir()
    text = source.read_text()
    out = []
    for i in range(n):
        path = dest / f"{i:02d}-{source.stem}.yaml"
        path.write_text(re.sub(r"^name: (\S+)", rf"name: \g<1>-{i}", text, count=1, flags=re.M))
        out.append(str(path))
    return out


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[bytes]]:
    """Record every table the real iasl round trip and acpiexec are run on."""
    seen: dict[str, list[bytes]] = {"round_trip": [], "evaluate": []}
    real_rt, real_ev = validators.round_trip_faults, validators.evaluate

    def round_trip(aml: bytes) -> list[str]:
        seen["round_trip"].append(aml)
        return real_rt(aml)

    def evaluate(ssdt: bytes, started: acpica.Execution | None = None) -> Evaluation:
        seen["evaluate"].append(ssdt)
        return real_ev(ssdt, started)

    monkeypatch.setattr(validators, "round_trip_faults", round_trip)
    monkeypatch.setattr(validators, "evaluate", evaluate)
    return seen


def test_each_distinct_table_runs_once_and_answers_as_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = example_ssdt(ACPI_HOLE)
    bad = checksum_broken(good)
    alone = [validators.round_trip_faults(t) for t in (good, bad)]
    assert alone[0] == [] and alone[1] and "checksum" in alone[1][0].lower(), alone
    seen = _counting(monkeypatch)
    kept = memo.Memo()
    answers = [kept.round_trip(t) for t in (good, bad, good, bad, good)]
    assert answers == [alone[0], alone[1], alone[0], alone[1], alone[0]]
    assert seen["round_trip"] == [good, bad]
    evaluations = [kept.evaluate(t) for t in (good, bad, good)]
    assert evaluations[0] == evaluations[2] and evaluations[0].error is None
    assert evaluations[1] != evaluations[0]
    assert seen["evaluate"] == [good, bad]


def test_a_corrupt_ssdt_amid_identical_ones_is_its_own_descriptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _copies(tmp_path / "hole", ACPI_HOLE, 5) + _copies(tmp_path / "numa", ACPI_NUMA, 3)
    shutil.copy(files[2], tmp_path / "hole" / "twin.yaml")  # same VM name as copy 2
    files.insert(3, str(tmp_path / "hole" / "twin.yaml"))
    victim = files[2]

    def corrupt_victims_ssdt() -> None:
        alter_outputs(
            monkeypatch,
            lambda path: path == victim,
            lambda o: (
                o._replace(data=checksum_broken(o.data)) if o.name.endswith(".ssdt.aml") else o
            ),
        )

    corrupt_victims_ssdt()
    # Every description on its own, each with a memo of its own: the reference.
    want = [chunk.validate_file(f, ACPI_ONLY) for f in files]
    seen = _counting(monkeypatch)
    got = chunk.validate_chunk(files, ACPI_ONLY)
    assert got == want
    # Two distinct SSDTs and the SRAT of the NUMA copies, one corrupt SSDT: 4 round trips.
    assert len(seen["round_trip"]) == len(set(seen["round_trip"])) == 4
    assert len(seen["evaluate"]) == len(set(seen["evaluate"])) == 3

    bad = [r for r in got if not r.ok]
    assert [r.path for r in bad] == [victim]
    [report] = bad
    tools = [f for f in report.failures if f.rule in ("iasl", "acpiexec")]
    assert {f.rule for f in tools} == {"iasl", "acpiexec"}, report.failures
    assert all(f.message.split(": ")[1] == "uefi-acpi-hole-2.ssdt.aml" for f in tools), tools
    # Its twin (same VM name, same file names, built from the same text) stays clean.
    assert got[3].ok and got[3].vm == report.vm == "uefi-acpi-hole-2"

    # Whole runs, in-process across chunks of every size: the same reports.
    monkeypatch.undo()
    corrupt_victims_ssdt()
    whole = [validate.run(files, jobs=1, external=True, batch=b) for b in (1, 3, 64)]
    assert all_reports(whole[1]) == all_reports(whole[0]) == all_reports(whole[2])
    assert [r.path for r in whole[0].files if not r.ok] == [victim]


def _read(answer: Evaluation) -> list[validators.Problem]:
    """What a report takes from an acpiexec answer (against a region no table claims)."""
    return validators.evaluation_problems("t.aml", answer, Range(0x1000, 0x1000))


def test_acpiexec_runs_overlap_a_window_at_a_time_and_answer_as_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = [example_ssdt(p) for p in (ACPI_HOLE, ACPI_NUMA, ACPI_NUMA4)]
    tables = [*good, *(checksum_broken(t) for t in good[:2]), good[0]]  # 5 distinct, one twice
    alone = [validators.evaluate(t) for t in tables]
    assert [a.error is None for a in alone] == [True, True, True, False, False, True]
    events: list[str] = []
    live: list[int] = [0, 0]  # now, most at once
    real_init, real_output = acpica.Execution.__init__, acpica.Execution.output

    def init(self: acpica.Execution, tables: list[bytes], commands: list[str]) -> None:
        real_init(self, tables, commands)
        events.append("start")
        live[0] += 1
        live[1] = max(live)

    def output(self: acpica.Execution) -> str:
        try:
            return real_output(self)
        finally:
            events.append("done")
            live[0] -= 1

    monkeypatch.setattr(acpica.Execution, "__init__", init)
    monkeypatch.setattr(acpica.Execution, "output", output)
    monkeypatch.setattr(memo, "WINDOW", 2)
    kept = memo.Memo()
    with kept.evaluating(tables):
        events.append("block")
    assert events == [
        *["start"] * 2,
        "block",
        *["done"] * 2,
        *["start", "start", "done", "done"],
        "start",
        "done",
    ]
    assert live == [0, 2]
    # acpiexec prints heap addresses, which differ run to run; what is read from it may not.
    assert [_read(kept.evaluations[t]) for t in tables] == [_read(a) for a in alone]
    assert [_read(kept.evaluate(t)) for t in tables] == [_read(a) for a in alone]
    assert events.count("start") == 5


def test_an_interrupted_block_stops_its_acpiexec_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[acpica.Execution] = []
    real_close = acpica.Execution.close

    def close(self: acpica.Execution) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(acpica.Execution, "close", close)
    kept = memo.Memo()
    with (
        pytest.raises(KeyboardInterrupt),
        kept.evaluating([example_ssdt(ACPI_HOLE), example_ssdt(ACPI_NUMA)]),
    ):
        raise KeyboardInterrupt
    assert len(closed) == 2 and kept.evaluations == {}
    assert all(job._job._proc.returncode is not None for job in closed)  # reaped
    assert not any(Path(job._tmp.name).exists() for job in closed)
