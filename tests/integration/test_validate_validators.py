"""Negative controls: each external validator ``pvdesc validate`` runs does reject bad output.

pvdesc never writes a DTB that dtc or dt-validate rejects, so the validator
runners are fed hand-made bad DTBs and ACPI tables here, and one run of the
whole command has a bad DTB injected in place of the built one (in-process,
``--jobs 1``), which it must report with every rule that trips.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import ROOT, checksum_broken, cli_in_process, dtc, example_ssdt

from pvdesc.commands.validate import reports
from pvdesc.commands.validate.results import Externals, Failure, FileReport, FleetReport
from pvdesc.commands.validate.single import build_failure
from pvdesc.core.ranges import Range
from pvdesc.emit import build
from pvdesc.errors import DescriptionError, ToolError
from pvdesc.tools import crs, proc, validators
from pvdesc.tools.validators import Validator

CARVED = ROOT / "examples" / "linux-carve-reserved.yaml"
ACPI_HOLE = ROOT / "examples" / "uefi-acpi-hole.yaml"


def _bad_tree(region: Range) -> str:
    """/memory over the region in a node with ``reg`` but no unit address (dtc -E
    unit_address_vs_reg), and a /reserved-memory without ``ranges`` (dt-validate: the
    shipped parent schema requires it), so its no-map child reaches no guest address."""
    hi, lo = region.base >> 32, region.base & 0xFFFFFFFF
    return f"""/ {{
    #address-cells = <2>; #size-cells = <2>;
    compatible = "linux,dummy-virt"; model = "bad";
    memory {{ device_type = "memory"; reg = <0 0x40000000 0 0x80000000>; }};
    reserved-memory {{
        #address-cells = <2>; #size-cells = <2>;
        stolen-time@{region.base:x} {{ reg = <{hi:#x} {lo:#x} 0 {region.size:#x}>; no-map; }};
    }};
}};
"""


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return validators.compile_schema(tmp_path_factory.mktemp("schema"))


def test_dtc_rejects_a_node_with_reg_but_no_unit_address(tmp_path: Path) -> None:
    region = build.plan(CARVED).layout.region
    dtc(_bad_tree(region), tmp_path, "bad")
    [problem] = validators.dtc(tmp_path, "bad.dtb", None)
    assert problem.validator is Validator.DTC
    assert problem.message.startswith("bad.dtb: dtc -E checks (exit ")
    assert "unit_address_vs_reg" in problem.message and "/memory:" in problem.message


def test_dtc_accepts_pvdesc_output_and_catches_a_dts_that_drifted(tmp_path: Path) -> None:
    result = build.plan(CARVED)
    files = {o.name: o.data for o in result.outputs}
    (tmp_path / "x.dtb").write_bytes(files["linux-carve-reserved.dtb"])
    (tmp_path / "x.dts").write_bytes(files["linux-carve-reserved.dts"])
    assert validators.dtc(tmp_path, "x.dtb", "x.dts") == []
    drifted = files["linux-carve-reserved.dts"].replace(
        b"no-map;", b'no-map;\n\t\tstatus = "okay";'
    )
    assert drifted != files["linux-carve-reserved.dts"]
    (tmp_path / "x.dts").write_bytes(drifted)
    [problem] = validators.dtc(tmp_path, "x.dtb", "x.dts")
    assert problem.message == "x.dts: compiles to other bytes than x.dtb"


def test_dt_validate_reports_what_it_exits_0_on(tmp_path: Path, schema: Path) -> None:
    region = build.plan(CARVED).layout.region
    dtc(_bad_tree(region), tmp_path, "bad")
    problems = validators.dt_validate(tmp_path, "bad.dtb", schema)
    assert problems, "dt-validate found nothing wrong with a /reserved-memory without ranges"
    assert all(p.validator is Validator.DT_VALIDATE for p in problems)
    assert any(
        p.message.startswith("bad.dtb: /reserved-memory: 'ranges' is a required property")
        and "reserved-memory-parent.yaml" in p.message
        for p in problems
    ), problems
    assert not any(str(tmp_path) in p.message for p in problems), "a temporary path leaked"


def test_dt_validate_accepts_pvdesc_output(tmp_path: Path, schema: Path) -> None:
    data = next(o.data for o in build.plan(CARVED).outputs if o.name.endswith(".dtb"))
    (tmp_path / "x.dtb").write_bytes(data)
    assert validators.dt_validate(tmp_path, "x.dtb", schema) == []


def test_iasl_round_trip_rejects_a_corrupt_table() -> None:
    aml = example_ssdt(ACPI_HOLE)
    assert validators.iasl_round_trip("t.aml", aml) == []
    [problem] = validators.iasl_round_trip("t.aml", checksum_broken(aml))
    assert problem.validator is Validator.IASL
    assert (
        problem.message.startswith("t.aml: round trip: ") and "checksum" in problem.message.lower()
    )


def test_acpiexec_checks_the_claim_against_the_region() -> None:
    result = build.plan(ACPI_HOLE)
    region = result.layout.region
    aml = next(o.data for o in result.outputs if o.name.endswith(".ssdt.aml"))
    assert validators.acpiexec("t.aml", aml, region) == []
    elsewhere = Range(region.base + 0x10000, region.size)
    [problem] = validators.acpiexec("t.aml", aml, elsewhere)
    assert problem.validator is Validator.ACPIEXEC
    assert problem.message == f"t.aml: \\_SB.PVTM._CRS claims {region}, not the region {elsewhere}"


def test_acpiexec_reports_a_table_without_the_device() -> None:
    # The SRAT has no \_SB.PVTM: evaluating it fails, which acpiexec reports with exit 0.
    result = build.plan(ROOT / "examples" / "uefi-acpi-numa.yaml")
    srat = next(o.data for o in result.outputs if o.name.endswith(".srat.aml"))
    problems = validators.acpiexec("s.aml", srat, result.layout.region)
    assert problems and problems[0].message.startswith("s.aml: ")


def test_crs_parser_reads_both_descriptor_kinds() -> None:
    text = """Evaluating _CRS

[00] 64-Bit QWORD Address Space Resource
              Resource Type : Memory Range
          Consumer/Producer : ResourceProducer
            Address Minimum : 000000013FFF0000
             Address Length : 0000000000010000

[01] 32-Bit Fixed Memory Range Resource
                    Address : 08050000
             Address Length : 00010000

[02] EndTag Resource
Resource Conversion Comparison:
"""
    ranges, odd = crs.crs_claims(text)
    assert ranges == [Range(0x13FFF0000, 0x10000), Range(0x08050000, 0x10000)]
    assert odd == ["64-Bit QWORD Address Space Resource is a ResourceProducer, not a consumer"]
    assert crs.crs_claims("nothing") == ([], ["acpiexec printed no _CRS"])


def test_compile_schema_failure_is_a_tool_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proc, "find_program", lambda name: "/bin/false")
    with pytest.raises(ToolError, match=r"^dt-mk-schema: cannot compile"):
        validators.compile_schema(tmp_path)


def test_one_line() -> None:
    assert validators.first_line("\n a\tb \n\nc\n") == "a b (+1 more lines)"
    assert validators.first_line("") == "no message"
    assert validators.first_line("x" * 500, limit=10) == "xxxxxxx..."


# --------------------------------------------------------------------------- whole command


def test_validate_reports_every_rule_an_injected_bad_dtb_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_plan = build.plan
    region = real_plan(CARVED).layout.region
    bad_dtb = dtc(_bad_tree(region), tmp_path, "bad").read_bytes()

    def plan_with_bad_dtb(path: str | Path, *args: object, **kw: object) -> build.BuildResult:
        result = real_plan(path)
        outputs = tuple(
            build.Output(o.name, o.kind, bad_dtb) if o.kind == "dtb" else o for o in result.outputs
        )
        return build.BuildResult(result.loaded, result.layout, outputs)

    monkeypatch.setattr(build, "plan", plan_with_bad_dtb)
    rel = str(CARVED.relative_to(ROOT))
    monkeypatch.chdir(ROOT)
    code, out, err = cli_in_process(
        ["validate", rel, "--jobs", "1", "--external", "--format", "json"], capsys
    )
    assert (code, err) == (1, "")
    [entry] = json.loads(out)["files"]
    assert entry["status"] == "failed"
    rules = [f["rule"] for f in entry["failures"]]
    assert "check:ipa-in-ram" in rules  # the no-map child is unreachable without ranges
    assert rules.count("dtc") == 2  # -E unit_address_vs_reg, and the DTS no longer matches
    assert "dt-validate" in rules
    # Output failures point at the description's stolen_time entry.
    line = next(i for i, t in enumerate(CARVED.read_text().splitlines(), 1) if "stolen_time" in t)
    assert {(f["file"], f["line"]) for f in entry["failures"]} == {(rel, line)}

    code, out, _ = cli_in_process(["validate", rel, "--jobs", "1", "--external"], capsys)
    first, summary = out.splitlines()
    assert first.startswith(f"FAIL {rel}:{line}:")
    assert re.search(r" \(\+\d+ more: dt-validate, dtc\)$", first), first
    assert summary.startswith("validate: 1 description, 0 ok, 1 failed;")


# --------------------------------------------------------------------------- report units

EXT = Externals("auto", (Validator.DTC,), ((Validator.DT_VALIDATE, ("dt-validate",)),), None)


def test_build_failure_keeps_the_build_text() -> None:
    err = DescriptionError("bad thing", "a/b.yaml:3:4: memory[0].size")
    f = build_failure("a/b.yaml", err)
    assert (f.rule, f.file, f.line, f.column) == ("description", "a/b.yaml", 3, 4)
    assert f.text == "a/b.yaml:3:4: memory[0].size: bad thing"
    tool = build_failure("a/b.yaml", ToolError("not found", "iasl"))
    assert (tool.rule, tool.line, tool.text) == ("tool", None, "a/b.yaml: iasl: not found")
    nowhere = build_failure("a/b.yaml", DescriptionError("cannot read", "a/b.yaml"))
    assert (nowhere.line, nowhere.text) == (None, "a/b.yaml: cannot read")


def test_text_and_github_lines_for_several_failures() -> None:
    fails = (
        Failure("dtc", "v,1.yaml", 2, 3, "dtc: x\ny 100%"),
        Failure("check:ipa-in-ram", "v,1.yaml", 2, 3, "check ..."),
        Failure("dtc", "v,1.yaml", 2, 3, "dtc: again"),
    )
    rep = FleetReport((FileReport("v,1.yaml", "v", ("build",), fails),), EXT)
    text = reports.to_text(rep).splitlines()
    assert text[0] == "FAIL v,1.yaml:2:3: dtc: x y 100% (+2 more: check:ipa-in-ram, dtc)"
    assert len(text) == 2
    gh = reports.to_github(rep).splitlines()
    assert gh[0] == (
        "::error file=v%2C1.yaml,line=2,col=3,title=pvdesc validate (dtc)::dtc: x%0Ay 100%25"
    )
    assert gh[1] == (
        "::error file=v%2C1.yaml,line=2,col=3,title=pvdesc validate (check%3Aipa-in-ram)::check ..."
    )
    assert gh[-1] == (
        "validate: 1 description, 0 ok, 1 failed; external validators: dtc; not run, tools "
        "missing: dt-validate (needs dt-validate: pip install dtschema)"
    )


def test_junit_carries_no_control_characters() -> None:
    fails = (Failure("description", "a.yaml", 1, 1, "bad \x01 byte"),)
    data = reports.to_junit(FleetReport((FileReport("a.yaml", None, ("build",), fails),), EXT))
    assert b"\x01" not in data and b"bad \\x01 byte" in data
