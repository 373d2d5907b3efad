"""``pvdesc validate`` in batches and shards: the same report, however the fleet is cut.

The external validators run over many descriptions per process where the tool
allows it (dt-validate over a chunk's DTBs); each finding must come back to its
own description.  These tests compare whole reports (text, JSON, JUnit bytes)
between every description on its own (``batch=1``, the behaviour before batching)
and batched runs, with a bad DTB injected in the middle of a batch and two
descriptions of the same VM name in one batch; and they merge the JUnit files of
``--shard K/N`` runs into the testcases of one whole run.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema
from helpers import ROOT, all_reports, alter_outputs, cli_subprocess, dtc, sigterm_after_mkdtemp
from test_validate_validators import CARVED, _bad_tree

from pvdesc.commands.validate import chunk
from pvdesc.commands.validate import fleet as validate
from pvdesc.commands.validate.results import Externals, ValidateUsageError
from pvdesc.emit import build
from pvdesc.tools import proc, signals, validators
from pvdesc.tools.validators import Validator

EXAMPLES = ROOT / "examples"
BAD = ROOT / "tests" / "data" / "bad"
JUNIT_XSD = ROOT / "tests" / "data" / "junit" / "junit.xsd"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/ and the bad corpus, plus two more copies of one example under its own name."""
    root = tmp_path_factory.mktemp("fleet")
    shutil.copytree(EXAMPLES, root / "examples")
    shutil.copytree(BAD, root / "bad")
    for copy in ("twin-a", "twin-b"):  # same VM name as examples/linux-carve-reserved.yaml
        shutil.copy(CARVED, root / "examples" / f"{copy}.yaml")
    return root


def _inject_bad_dtb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, victim: str) -> None:
    """Builds of ``victim`` (a file name) get a DTB that dtc and dt-validate reject."""
    region = build.plan(CARVED).layout.region
    bad_dtb = dtc(_bad_tree(region), tmp_path, "bad").read_bytes()
    alter_outputs(
        monkeypatch,
        lambda path: Path(path).name == victim,
        lambda o: o._replace(data=bad_dtb) if o.kind == "dtb" else o,
    )


def test_batched_and_unbatched_reports_are_identical(
    fleet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inject_bad_dtb(monkeypatch, tmp_path, "twin-a.yaml")
    monkeypatch.chdir(fleet)
    paths = ["examples", "bad"]
    alone = validate.run(paths, jobs=1, external=True, batch=1)
    batched = validate.run(paths, jobs=1, external=True)  # one chunk of up to 256
    odd = validate.run(paths, jobs=1, external=True, batch=5)  # chunks cut mid-fleet
    assert all_reports(batched) == all_reports(alone)
    assert all_reports(odd) == all_reports(alone)

    by_path = {f.path: f for f in alone.files}
    victim = by_path["examples/twin-a.yaml"]
    rules = [x.rule for x in victim.failures]
    assert rules.count("dtc") == 2 and "dt-validate" in rules, rules
    # Its twins (same VM name, same output file names, same batch) stay clean.
    assert by_path["examples/twin-b.yaml"].ok
    assert by_path["examples/linux-carve-reserved.yaml"].ok
    assert [f.path for f in alone.files if not f.ok] == [
        *(f"bad/{p.name}" for p in sorted(BAD.glob("*.yaml"))),
        "examples/twin-a.yaml",
    ]


def test_dt_validate_many_maps_each_diagnostic_to_its_dtb(tmp_path: Path) -> None:
    region = build.plan(CARVED).layout.region
    good = build.plan(CARVED).outputs
    dtb = next(o.data for o in good if o.kind == "dtb")
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "vm.dtb").write_bytes(dtb)
    dtc(_bad_tree(region), tmp_path / "b", "vm")  # b/vm.dtb: rejected by dt-validate
    schema = validators.compile_schema(tmp_path / "schema")
    pairs = [(f"{folder}/vm.dtb", "vm.dtb") for folder in ("a", "b", "c")]
    many = validators.dt_validate_many(tmp_path, pairs, schema)
    alone = [validators.dt_validate(tmp_path / f, "vm.dtb", schema) for f in ("a", "b", "c")]
    assert many == alone
    assert alone[0] == alone[2] == [] and alone[1], alone


def test_a_batch_without_an_answer_falls_back_to_one_dtb_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = proc.find_program
    monkeypatch.setattr(
        proc, "find_program", lambda n: "/bin/false" if n == "dt-validate" else real(n)
    )
    assert validators.dt_validate_many(tmp_path, [("a/x.dtb", "x.dtb"), ("b/x.dtb", "x.dtb")],
                                       tmp_path / "s.json") is None  # fmt: skip
    ext = Externals("on", (Validator.DT_VALIDATE,), (), str(tmp_path / "s.json"))
    files = [str(EXAMPLES / "generic-hole.yaml"), str(EXAMPLES / "kvmtool.yaml")]
    got = chunk.validate_chunk(files, ext)
    want = [chunk.validate_file(f, ext) for f in files]
    assert got == want
    assert all(f.failures[0].message.startswith("dt-validate: ") for f in got)
    assert "failed to run (exit 1)" in got[0].failures[0].message


def test_chunks_keep_the_order_and_use_every_worker() -> None:
    files = [f"{i:03d}.yaml" for i in range(130)]
    for jobs, batch in ((1, 64), (2, 64), (3, 10), (200, 64), (2, 1)):
        parts = validate.chunks(files, jobs, batch)
        assert [f for part in parts for f in part] == files
        assert max(len(p) for p in parts) <= batch
        assert len(parts) >= min(jobs, len(files))
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1  # workers end together
        assert len(parts) % jobs == 0 or len(parts) == len(files)
    assert [len(p) for p in validate.chunks([str(i) for i in range(1000)], 2, 256)] == [250] * 4
    assert validate.chunks([], 2) == []


# --------------------------------------------------------------------------- --shard


def _validate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return cli_subprocess("validate", *args, cwd=cwd, timeout=600)


def _cases(junit: Path) -> list[bytes]:
    """Each testcase as XML, without the indentation that follows it."""
    cases = list(ET.fromstring(junit.read_bytes()).iter("testcase"))
    for case in cases:
        case.tail = None
    return [ET.tostring(case) for case in cases]


def test_shards_partition_the_fleet_and_their_junit_merges_into_one_run(tmp_path: Path) -> None:
    whole = tmp_path / "whole.xml"
    res = _validate("examples/", "tests/data/bad/", "--no-external", "--junit", str(whole))
    assert res.returncode == 1, res.stderr
    schema = xmlschema.XMLSchema(str(JUNIT_XSD))
    n = 3
    merged: list[bytes] = []
    summaries = []
    for k in range(1, n + 1):
        part = tmp_path / f"shard-{k}.xml"
        res = _validate(
            "examples/", "tests/data/bad/", "--no-external", "--shard", f"{k}/{n}",
            "--junit", str(part),
        )  # fmt: skip
        assert res.returncode in (0, 1), res.stderr
        schema.validate(str(part))
        props = {
            p.get("name"): p.get("value") for p in ET.fromstring(part.read_bytes()).iter("property")
        }
        assert props["shard"] == f"{k}/{n}"
        merged += _cases(part)
        summaries.append(res.stdout.splitlines()[-1])
    whole_cases = _cases(whole)
    assert sorted(merged) == sorted(whole_cases)
    assert len(set(merged)) == len(merged) == len(whole_cases)  # no description twice
    total = len(whole_cases)
    assert all(f"of {total})" in s for s in summaries), summaries


def test_a_shard_beyond_the_fleet_is_empty_and_passes(tmp_path: Path) -> None:
    res = _validate("examples/generic-hole.yaml", "--no-external", "--shard", "2/2")
    assert res.returncode == 0, res.stderr
    assert res.stdout == (
        "validate: 0 descriptions, 0 ok, 0 failed (shard 2/2 of 1); "
        "external validators: none (--no-external)\n"
    )


@pytest.mark.parametrize("shard", ["0/2", "3/2", "1", "a/b", "1/0", "1/2/3"])
def test_a_bad_shard_is_one_line_and_exit_2(shard: str) -> None:
    res = _validate("examples/", "--no-external", "--shard", shard)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.startswith("pvdesc: error: --shard: ")
    assert res.stderr.count("\n") == 1


def test_a_drifted_dts_amid_a_chunk_is_its_own_descriptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each DTS dtc reads in a chunk is its own description's, whatever came before it."""
    names = ["generic-hole", "kvmtool", "linux-carve-reserved", "crosvm", "single-vcpu"]
    files = [str(EXAMPLES / f"{n}.yaml") for n in names]
    victim = files[2]
    alter_outputs(
        monkeypatch,
        lambda path: path == victim,
        lambda o: (
            o._replace(data=o.data.replace(b"no-map;", b'no-map;\n\t\tstatus = "okay";'))
            if o.kind == "dts"
            else o
        ),
    )
    ext = Externals("on", (Validator.DTC,), (), None)
    got = chunk.validate_chunk(files, ext)
    assert got == [chunk.validate_file(f, ext) for f in files]
    assert [r.path for r in got if not r.ok] == [victim]
    [failure] = got[2].failures
    assert failure.message == (
        "dtc: linux-carve-reserved.dts: compiles to other bytes than linux-carve-reserved.dtb"
    )


# --------------------------------------------------------------------------- the schema


def _schema_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: str) -> None:
    """This process runs ``script`` (a shell script) as dt-mk-schema; the workers never run it."""
    real = proc.find_program
    tool = tmp_path / "bin" / "dt-mk-schema"
    tool.parent.mkdir()
    tool.write_text(f"#!/bin/sh\n{script.format(real=real('dt-mk-schema'))}\n")
    tool.chmod(0o755)
    monkeypatch.setattr(
        proc, "find_program", lambda n: str(tool) if n == "dt-mk-schema" else real(n)
    )


def _fleet_of(tmp_path: Path, n: int) -> list[str]:
    """``n`` descriptions, the examples in turn, for chunks in two workers."""
    examples = sorted(EXAMPLES.glob("*.yaml"))
    (tmp_path / "fleet").mkdir()
    for i in range(n):
        shutil.copy(
            examples[i % len(examples)],
            tmp_path / "fleet" / f"{i:03d}-{examples[i % len(examples)].name}",
        )
    return [str(tmp_path / "fleet")]


def test_workers_wait_for_a_schema_that_compiles_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _fleet_of(tmp_path, 6)
    want = validate.run(paths, jobs=1, external=True)
    _schema_tool(monkeypatch, tmp_path, 'sleep 2; exec "{real}" "$@"')
    late = validate.run(paths, jobs=2, external=True, batch=2)  # 3 workers' chunks start first
    assert all_reports(late) == all_reports(want)
    assert late.ok and "dt-validate" in late.files[0].stages


def test_a_schema_that_fails_as_workers_run_is_one_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _fleet_of(tmp_path, 6)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the workers' folders
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # this process's
    _schema_tool(monkeypatch, tmp_path, "sleep 1; echo 'no schema today' >&2; exit 3")
    with pytest.raises(ValidateUsageError) as info:
        validate.run(paths, jobs=2, external=True, batch=2)
    assert str(info.value) == (
        "--external: dt-mk-schema: cannot compile the devicetree schemas (exit 3): no schema today"
    )
    assert list(scratch.iterdir()) == []


def test_a_stop_the_moment_a_chunks_folder_exists_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM right after mkdtemp made a chunk's folder (as a run stops its workers): removed."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    sigterm_after_mkdtemp(monkeypatch)
    with pytest.raises(signals.Stopped), signals.stopping():
        chunk.validate_chunk(
            [str(ROOT / "examples" / "single-vcpu.yaml")], Externals("off", (), (), None)
        )
    assert list(scratch.iterdir()) == []


def test_a_schema_nobody_compiles_is_not_waited_for(tmp_path: Path) -> None:
    start = time.monotonic()
    chunk.await_schema(tmp_path / "processed-schema.json", timeout=30)
    assert time.monotonic() - start < 5
    (tmp_path / validators.PENDING.format("processed-schema.json")).touch()
    start = time.monotonic()
    chunk.await_schema(tmp_path / "processed-schema.json", timeout=0.3)  # under way: waits
    assert time.monotonic() - start >= 0.3
