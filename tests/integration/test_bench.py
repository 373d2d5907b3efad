"""Keep the benchmark runnable: ``bench/run --quick`` works and writes complete JSON.

No timing is asserted here (benchmarks are not tests); the figures of a quick
run mean nothing.  Also: :func:`pvdesc.tools.acpica.timing` records the iasl runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from helpers import ROOT, run

from pvdesc.tools import acpica

KEYS = {
    "build.cli",
    "build.interpreter",
    "build.imports",
    "build.inprocess",
    "build.own",
    "build.iasl",
    "baseline.dtc",
    "baseline.iasl",
    "build.ratio_cli",
    "build.ratio_floor",
    "build.ratio_inprocess",
    "build.cli_hookless",
    "build.interpreter_hookless",
    "build.ratio_cli_hookless",
    "check.qemu_dtb",
    "check.ratio_bare",
    "check.ratio_bare_hookless",
    "check.nodes_10k",
    "sweep.small",
    "sweep.large",
    "sweep.growth",
    "version.cold_start",
    "validate.jobs1",
    "validate.jobs2",
    "fleet.external",
    "fleet.no_external",
    "fleet.distinct",
    "yaml.large_vm",
    "yaml.unclosed_flow_list",
    "yaml.closed_flow_list",
    "yaml.unclosed_long_items",
    "yaml.deep_nesting",
    "yaml.too_many_banks",
    "yaml.unknown_keys",
    "yaml.alias_fan_out",
}
ROW_KEYS = {"what", "value", "unit", "cpu", "target", "status", "note", "detail"}


def test_bench_run_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHON": sys.executable}
    res = run([str(ROOT / "bench" / "run"), "--quick", "--json", str(out)], env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == "pvdesc.bench/1"
    assert doc["mode"] == "quick" and doc["repeats"] == 1
    machine = doc["machine"]
    assert {"cpu", "cores", "python", "pvdesc", "commit", "tools", "loadavg"} <= set(machine)
    assert {"dtc", "iasl", "qemu-system-aarch64"} <= set(machine["tools"])
    assert set(doc["results"]) == KEYS
    for key, row in doc["results"].items():
        assert set(row) == ROW_KEYS, key
        assert row["status"] in ("pass", "miss", "info", "skipped"), key
        assert row["unit"] in ("s", "x"), key
        if row["status"] == "skipped":
            assert row["value"] is None and row["note"].startswith("skipped: "), key
        else:
            assert isinstance(row["value"], float) and row["value"] > 0, key
            assert isinstance(row["cpu"], float) and row["cpu"] >= 0, key
    # every row is in the printed table too
    for row in doc["results"].values():
        assert row["what"] in res.stdout


def test_timing_records_iasl_runs() -> None:
    source = 'DefinitionBlock ("", "SSDT", 2, "PVDESC", "TIMING", 1)\n{\n}\n'
    acpica.compile_asl(source, template="ssdt.asl.j2", name="outside")
    with acpica.timing() as outer:
        acpica.compile_asl(source, template="ssdt.asl.j2", name="a")
        with acpica.timing() as inner:
            acpica.compile_asl(source, template="ssdt.asl.j2", name="b")
    assert [name for name, _ in outer.runs] == ["iasl", "iasl"]
    assert [name for name, _ in inner.runs] == ["iasl"]
    assert all(secs > 0 for _, secs in outer.runs)
    assert outer.total >= inner.total > 0


def test_bench_fuzz_runs_with_either_engine(tmp_path: Path) -> None:
    """``bench/fuzz.py`` a few inputs at a time: both engines finish and print their totals."""
    fuzz = [sys.executable, str(ROOT / "bench" / "fuzz.py")]
    hyp = ["--engine", "hypothesis", "--scale", "0.001", "--crashes", str(tmp_path)]
    res = run([*fuzz, *hyp], timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pytest exit 0, failing inputs saved: 0" in res.stdout, res.stdout
    res = run(
        [*fuzz, "--runs", "20", "--targets", "yaml,acpi", "--crashes", str(tmp_path)], timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    totals = json.loads(res.stdout.splitlines()[-1])
    assert totals["engine"] == "atheris" and totals["failures"] == 0 and totals["inputs"] >= 40
    assert list(tmp_path.iterdir()) == []
