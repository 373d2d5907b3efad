"""``pvdesc validate`` end to end: the CLI in subprocesses on examples/ and tests/data/bad/.

The shipped examples must all pass with every external validator; the bad
corpus must fail with exactly the line ``pvdesc build`` prints for each file
(derived from its ``X.expected``: ``pvdesc: error: `` becomes ``FAIL ``).  The
JUnit report is validated against tests/data/junit/junit.xsd and parsed, the
GitHub annotations are parsed line by line, and serial and parallel runs must
give identical reports.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from helpers import ROOT, cli_subprocess

from pvdesc.core.model import Boot, Describe, Placement, Vmm
from pvdesc.emit import build

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BAD = sorted((ROOT / "tests" / "data" / "bad").glob("*.yaml"))
JUNIT_XSD = ROOT / "tests" / "data" / "junit" / "junit.xsd"
ALL_VALIDATORS = "dtc, dt-validate, iasl, acpiexec"
#: Long enough for every example with every validator on a slow machine; never a timing assertion.
TIMEOUT = 900


def validate(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Any:
    """``python -m pvdesc validate ARGS`` in a fresh interpreter."""
    return cli_subprocess("validate", *args, cwd=cwd, env=env, timeout=TIMEOUT)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def expected_fail_line(case: Path) -> str:
    """The validate line for a bad description: its build error line with ``FAIL `` in front."""
    build_line = case.with_suffix(".expected").read_text()
    prefix = "pvdesc: error: "
    assert build_line.startswith(prefix) and build_line.count("\n") == 1, build_line
    return "FAIL " + build_line[len(prefix) :].rstrip("\n")


# --------------------------------------------------------------------------- the two corpora


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, bytes]:
    """examples/ and tests/data/bad/ with --jobs 1: (process, JUnit bytes)."""
    junit = tmp_path_factory.mktemp("serial") / "report.xml"
    res = validate(
        "examples/", "tests/data/bad/", "--jobs", "1", "--external", "--junit", str(junit)
    )
    return res, junit.read_bytes()


@pytest.fixture(scope="module")
def parallel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, bytes]:
    """The same with --jobs 2 (worker processes)."""
    junit = tmp_path_factory.mktemp("parallel") / "report.xml"
    res = validate(
        "tests/data/bad/", "examples/", "--jobs", "2", "--external", "--junit", str(junit)
    )
    return res, junit.read_bytes()


def test_examples_pass_every_validator() -> None:
    res = validate("examples/", "--external")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines[:-1] == [f"ok   {rel(p)}" for p in EXAMPLES]
    n = len(EXAMPLES)
    assert lines[-1] == (
        f"validate: {n} descriptions, {n} ok, 0 failed; external validators: {ALL_VALIDATORS}"
    )


def test_examples_cover_every_placement_describe_and_boot() -> None:
    results = [build.plan(p) for p in EXAMPLES]
    lays = [r.layout for r in results]
    descs = [lay.description for lay in lays]
    assert len(EXAMPLES) >= 10
    assert {lay.placement for lay in lays} == set(Placement)
    assert {lay.describe for lay in lays} == set(Describe) - {Describe.AUTO}
    assert {d.stolen_time.describe for d in descs} >= {Describe.AUTO}
    assert {d.boot for d in descs} == set(Boot)
    assert {d.vmm for d in descs} == set(Vmm) - {Vmm.CLOUD_HYPERVISOR}
    assert {len(d.numa_nodes) for d in descs} >= {2, 4}
    assert min(d.max_vcpus for d in descs) == 1
    assert max(d.max_vcpus for d in descs) == 512
    assert any(b.range.end > 1 << 32 for d in descs for b in d.memory)
    assert any(b.range.base >= 512 << 30 and d.ipa_bits >= 44 for d in descs for b in d.memory)
    assert max(len(d.devices) for d in descs) >= 50
    for path in EXAMPLES:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 30, f"{path.name}: no comment on line 1"


def test_bad_corpus_fails_with_exactly_the_build_lines() -> None:
    res = validate("tests/data/bad/", "--external")
    assert res.returncode == 1, res.stderr
    assert res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines[:-1] == [expected_fail_line(case) for case in BAD]
    n = len(BAD)
    assert lines[-1] == (
        f"validate: {n} descriptions, 0 ok, {n} failed; external validators: {ALL_VALIDATORS}"
    )


def test_serial_and_parallel_reports_are_identical(
    serial: tuple[Any, bytes], parallel: tuple[Any, bytes]
) -> None:
    (s, s_junit), (p, p_junit) = serial, parallel
    assert s.returncode == p.returncode == 1
    assert s.stdout == p.stdout
    assert s_junit == p_junit
    ok = [(rel(p), f"ok   {rel(p)}") for p in EXAMPLES]
    bad = [(rel(case), expected_fail_line(case)) for case in BAD]
    assert s.stdout.splitlines()[:-1] == [line for _, line in sorted(ok + bad)]


def test_serial_and_parallel_json_are_identical() -> None:
    one = validate("examples/", "tests/data/bad/", "--jobs", "1", "--format", "json")
    two = validate("examples/", "tests/data/bad/", "--jobs", "2", "--format", "json")
    assert one.returncode == two.returncode == 1
    assert one.stdout == two.stdout
    doc = json.loads(one.stdout)
    assert doc["format"] == "pvdesc.validate/1"
    assert doc["external"] == {"mode": "auto", "ran": ALL_VALIDATORS.split(", "), "missing": []}
    assert doc["summary"] == {
        "descriptions": len(EXAMPLES) + len(BAD),
        "ok": len(EXAMPLES),
        "failed": len(BAD),
    }
    by_path = {f["path"]: f for f in doc["files"]}
    assert list(by_path) == sorted(by_path)
    for case in BAD:
        entry = by_path[rel(case)]
        assert entry["status"] == "failed" and entry["vm"] is None
        assert entry["stages"] == ["build"]
        [failure] = entry["failures"]
        assert "FAIL " + failure["text"] == expected_fail_line(case)
        loc = f"{failure['file']}:{failure['line']}:{failure['column']}"
        assert failure["text"] == f"{loc}: {failure['message']}"
    for ex in EXAMPLES:
        entry = by_path[rel(ex)]
        assert entry["status"] == "ok" and entry["failures"] == []
        acpi = build.plan(ex).layout.describe is Describe.ACPI
        validators = ["dtc", "dt-validate", *(["iasl", "acpiexec"] if acpi else [])]
        assert entry["stages"] == ["build", "check", *validators], ex.name


# --------------------------------------------------------------------------- JUnit


def test_junit_is_valid_and_says_what_failed(serial: tuple[Any, bytes], tmp_path: Path) -> None:
    _, data = serial
    schema = xmlschema.XMLSchema(str(JUNIT_XSD))
    schema.validate(data.decode("utf-8"))
    root = ET.fromstring(data)
    assert root.tag == "testsuites"
    [suite] = list(root.iter("testsuite"))
    total, failed = len(EXAMPLES) + len(BAD), len(BAD)
    for node in (root, suite):
        assert node.get("tests") == str(total)
        assert node.get("failures") == str(failed)
        assert node.get("errors") == "0"
    cases = suite.findall("testcase")
    names = [c.get("name") for c in cases]
    assert names == sorted([rel(p) for p in EXAMPLES] + [rel(p) for p in BAD])
    expected = {rel(case): expected_fail_line(case)[5:] for case in BAD}
    for case in cases:
        failures = case.findall("failure")
        name = case.get("name")
        if name in expected:
            [failure] = failures
            assert failure.get("message") == expected[name]
            assert failure.get("type") in {"description", "layout", "acpi"}
            assert failure.text == f"{failure.get('type')}: {expected[name]}\n"
        else:
            assert failures == []
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {
        "external.mode": "on",
        "external.ran": "dtc dt-validate iasl acpiexec",
        "external.missing": "",
    }


def test_the_junit_schema_rejects_a_broken_report() -> None:
    schema = xmlschema.XMLSchema(str(JUNIT_XSD))
    good = '<testsuites><testsuite name="s" tests="1"><testcase name="a"/></testsuite></testsuites>'
    schema.validate(good)
    for broken in (
        '<testsuites><testsuite tests="1"><testcase name="a"/></testsuite></testsuites>',
        '<testsuites><testsuite name="s" tests="-1"/></testsuites>',
        '<testsuites><testsuite name="s" tests="1"><testcase/></testsuite></testsuites>',
        '<testsuites><testsuite name="s" tests="1"><case name="a"/></testsuite></testsuites>',
    ):
        with pytest.raises(xmlschema.XMLSchemaValidationError):
            schema.validate(broken)


def test_junit_replaces_an_old_report_atomically(tmp_path: Path) -> None:
    junit = tmp_path / "reports" / "junit.xml"
    junit.parent.mkdir()
    junit.write_text("old")
    res = validate("examples/generic-hole.yaml", "--no-external", "--junit", str(junit))
    assert res.returncode == 0, res.stderr
    root = ET.fromstring(junit.read_bytes())
    assert [c.get("name") for c in root.iter("testcase")] == ["examples/generic-hole.yaml"]
    assert [p.name for p in junit.parent.iterdir()] == ["junit.xml"], "temporary files left"


# --------------------------------------------------------------------------- GitHub

_ERROR_RE = re.compile(
    r"^::error file=(?P<file>[^,:]+),line=(?P<line>\d+),col=(?P<col>\d+),"
    r"title=(?P<title>[^,:]+)::(?P<message>[^\r\n]*)$"
)


def unescape(text: str) -> str:
    for code, char in (("%0A", "\n"), ("%0D", "\r"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(code, char)
    return text


def test_github_annotations_parse(tmp_path: Path) -> None:
    res = validate("examples/", "tests/data/bad/", "--format", "github", "--no-external")
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert lines[-1].startswith(f"validate: {len(EXAMPLES) + len(BAD)} descriptions, ")
    oks, errors = [], []
    for line in lines[:-1]:
        m = _ERROR_RE.match(line)
        if m:
            errors.append(m)
        else:
            assert line.startswith("ok   "), line
            oks.append(line[5:])
    assert oks == [rel(p) for p in EXAMPLES]
    assert len(errors) == len(BAD)
    for case, m in zip(BAD, errors, strict=True):
        want = expected_fail_line(case)[5:]
        file, message = unescape(m["file"]), unescape(m["message"])
        assert f"{file}:{m['line']}:{m['col']}: {message}" == want
        assert unescape(m["title"]) in {
            f"pvdesc validate ({r})" for r in ("description", "layout", "acpi")
        }


def test_github_escapes_properties_and_messages(tmp_path: Path) -> None:
    odd = tmp_path / "odd,na:me%.yaml"
    odd.write_text("name: x\nvcpus: 1\nmemory:\n  - {base: 0x40000000, size: 1G}\nbogus: 1\n")
    res = validate(str(odd), "--format", "github", "--no-external", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    line = res.stdout.splitlines()[0]
    assert line.startswith("::error file=") and "\n" not in line
    m = _ERROR_RE.match(line)
    assert m, line
    assert "%2C" in m["file"] and "%3A" in m["file"] and "%25" in m["file"]
    assert unescape(m["file"]) == str(odd)
    assert (m["line"], m["col"]) == ("5", "1")
    assert unescape(m["message"]).startswith("bogus: unknown key 'bogus'")


# --------------------------------------------------------------------------- arguments


def test_discovery_is_recursive_sorted_deduplicated_and_skips_hidden(tmp_path: Path) -> None:
    good = (ROOT / "examples" / "single-vcpu.yaml").read_text()
    for name in ("b/z.yml", "b/a.yaml", "a.yaml", ".hidden/x.yaml", "b/.x.yaml", "b/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(good)
    res = validate(".", "b/a.yaml", "--no-external", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [
        "ok   a.yaml",
        "ok   b/a.yaml",
        "ok   b/z.yml",
        "validate: 3 descriptions, 3 ok, 0 failed; external validators: none (--no-external)",
    ]


def test_runs_outside_the_repository(tmp_path: Path) -> None:
    # The dtschema extra schema ships in the package: no tests/ or repo files needed.
    (tmp_path / "vm.yaml").write_text((ROOT / "examples" / "linux-carve-reserved.yaml").read_text())
    res = validate("vm.yaml", "--external", "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    [entry] = json.loads(res.stdout)["files"]
    assert entry["stages"] == ["build", "check", "dtc", "dt-validate"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope/"], "pvdesc: error: nope/: no such file or folder\n"),
        (["examples", "--jobs", "0"], "pvdesc: error: --jobs: must be at least 1 (got 0)\n"),
        (
            ["tests/data/junit"],
            "pvdesc: error: no descriptions (*.yaml or *.yml) under tests/data/junit\n",
        ),
        (["examples", "--junit", "examples"], "pvdesc: error: --junit: is a folder; name a file\n"),
        (
            ["examples", "--junit", "README.md/r.xml"],
            "pvdesc: error: --junit: cannot create README.md/r.xml: README.md is not a writable "
            "folder\n",
        ),
        (["examples", "--format", "xml"], None),
        ([], None),
    ],
)
def test_unusable_arguments_exit_2_with_one_line(args: list[str], message: str | None) -> None:
    res = validate(*args)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    if message is not None:
        assert res.stderr == message


def _env_without_tools(tmp_path: Path) -> dict[str, str]:
    """PATH holding nothing: dtc, iasl and acpiexec are gone; dt-validate stays (next to Python)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    return {"PATH": str(empty), "HOME": str(tmp_path)}


def test_external_requested_fails_when_a_tool_is_missing(tmp_path: Path) -> None:
    res = validate("examples/generic-hole.yaml", "--external", env=_env_without_tools(tmp_path))
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr == (
        "pvdesc: error: --external: cannot run every external validator: dtc needs dtc "
        "(apt-get install device-tree-compiler); iasl needs iasl (apt-get install acpica-tools); "
        "acpiexec needs acpiexec (apt-get install acpica-tools); or use --no-external\n"
    )


def test_default_runs_what_exists_and_says_what_did_not(tmp_path: Path) -> None:
    res = validate("examples/generic-hole.yaml", env=_env_without_tools(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [
        "ok   examples/generic-hole.yaml",
        "validate: 1 description, 1 ok, 0 failed; external validators: dt-validate; not run, "
        "tools missing: dtc (needs dtc: apt-get install device-tree-compiler), iasl (needs iasl: "
        "apt-get install acpica-tools), acpiexec (needs acpiexec: apt-get install acpica-tools)",
    ]
