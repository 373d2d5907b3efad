"""``pvdesc diff``: migration compatibility of two descriptions or configs (or one of each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import EXAMPLES, cli_in_process

from pvdesc.audit import diff, sides
from pvdesc.core.findings import Severity
from pvdesc.emit import build, hypervisor
from pvdesc.layout import allocate

CARVE = """name: g
vcpus: 4
max_vcpus: {max_vcpus}
memory:
  - {{base: 0x40000000, size: {ram}}}
stolen_time: {{placement: carve}}
"""
QEMU = """name: q
vcpus: 4
max_vcpus: {max_vcpus}
vmm: qemu-virt
memory:
  - {{base: 0x40000000, size: 1G}}
"""
FIXED = """name: f
vcpus: 2
memory:
  - {{base: {ram_base}, size: 1G}}
stolen_time: {{placement: fixed, base: 0x090a0000{describe}}}
"""


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def config_of(tmp: Path, desc: str) -> dict[str, Any]:
    """The hypervisor config pvdesc builds for a description, as data."""
    out = tmp / "built"
    result = build.build(desc, out, force=True)
    name = result.layout.description.name
    data: dict[str, Any] = json.loads((out / f"{name}.hypervisor.json").read_text())
    return data


def write_config(tmp: Path, name: str, data: dict[str, Any]) -> str:
    return write(tmp, name, json.dumps(data, indent=2))


def run_diff(
    capsys: pytest.CaptureFixture[str], old: str, new: str
) -> tuple[int, dict[str, Any], str]:
    code, out, err = cli_in_process(["diff", old, new, "--format", "json"], capsys)
    assert err == ""
    doc = json.loads(out)
    text_code, text, _ = cli_in_process(["diff", old, new], capsys)
    assert text_code == code
    return code, doc, text


def codes(doc: dict[str, Any], severity: str | None = None) -> list[str]:
    return [f["code"] for f in doc["findings"] if severity is None or f["severity"] == severity]


def test_json_document_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = str(EXAMPLES / "qemu-virt.yaml")
    code, doc, text = run_diff(capsys, a, a)
    assert code == 0
    assert set(doc) == {"format", "compatible", "findings"}
    assert doc["format"] == "pvdesc.diff/1" and doc["compatible"] is True
    assert all(set(f) == {"code", "severity", "message"} for f in doc["findings"])
    assert codes(doc) == ["compatible"]
    assert text.splitlines()[-1] == f"migration {a} -> {a}: compatible"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_is_compatible_with_itself_and_its_config(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, "x.hypervisor.json", config_of(tmp_path, str(example)))
    for old, new in ((str(example), cfg), (cfg, str(example)), (cfg, cfg)):
        code, doc, _ = run_diff(capsys, old, new)
        assert (code, codes(doc)) == (0, ["compatible"]), doc


def test_one_vcpu_ipa_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = config_of(tmp_path, str(EXAMPLES / "generic-hole.yaml"))
    old = write_config(tmp_path, "old.hypervisor.json", data)
    data["vcpus"][3]["pvtime_ipa"] += 0x1000
    new = write_config(tmp_path, "new.hypervisor.json", data)
    code, doc, text = run_diff(capsys, old, new)
    assert code == 1 and doc["compatible"] is False
    assert codes(doc, "error") == ["ipa-changed"]
    assert doc["findings"][0]["message"].startswith("vCPU 3: PVTIME_IPA ")
    assert text.splitlines()[-1].endswith(": NOT compatible")


def test_region_moved_by_a_ram_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path, "old.yaml", CARVE.format(max_vcpus=8, ram="1G"))
    new = write(tmp_path, "new.yaml", CARVE.format(max_vcpus=8, ram="2G"))
    code, doc, _ = run_diff(capsys, old, new)
    assert code == 1
    assert set(codes(doc, "error")) == {
        "ipa-changed",
        "region-moved",
        "region-memslot-changed",
        "ram-covers-region",  # the old region is RAM the new guest may use
    }
    assert codes(doc, "warning") == ["ram-layout-changed"]


def test_max_vcpus_growth_that_resizes_the_region(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QEMU sizes its region REAL_HOST_PAGE_ALIGN(max_cpus * 64): 8 -> 128 vCPUs grows it."""
    old = write(tmp_path, "old.yaml", QEMU.format(max_vcpus=8))
    new = write(tmp_path, "new.yaml", QEMU.format(max_vcpus=128))
    code, doc, _ = run_diff(capsys, old, new)
    assert code == 1
    errors = codes(doc, "error")
    assert {"region-resized", "max-vcpus-moves-region"} <= set(errors)
    assert "ipa-changed" not in errors  # the first 8 vCPUs keep their IPAs


def test_max_vcpus_growth_inside_the_region_is_compatible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = write(tmp_path, "small.yaml", CARVE.format(max_vcpus=8, ram="1G"))
    large = write(tmp_path, "large.yaml", CARVE.format(max_vcpus=16, ram="1G"))
    code, doc, _ = run_diff(capsys, small, large)
    assert (code, codes(doc)) == (0, ["max-vcpus-grown", "compatible"])
    code, doc, _ = run_diff(capsys, large, small)
    assert (code, codes(doc)) == (0, ["vcpus-only-on-source", "compatible"])
    assert doc["findings"][0]["message"].startswith("vCPUs 8-15 exist only on ")


def test_same_region_different_memslot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Own memslot outside RAM vs inside a RAM bank's memslot: same IPAs, not compatible."""
    old = write(tmp_path, "old.yaml", FIXED.format(ram_base="0x40000000", describe=""))
    new = write(tmp_path, "new.yaml", FIXED.format(ram_base="0x0", describe=", describe: exclude"))
    code, doc, _ = run_diff(capsys, old, new)
    assert code == 1
    assert codes(doc, "error") == ["region-memslot-changed"]


def test_revision_and_stride(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = config_of(tmp_path, str(EXAMPLES / "qemu-virt.yaml"))
    old = write_config(tmp_path, "old.json", data)
    data["stolen_time"]["revision"] = 1
    rev = write_config(tmp_path, "rev.json", data)
    code, doc, _ = run_diff(capsys, old, rev)
    assert code == 1 and codes(doc, "error") == ["revision-unsupported", "revision-mismatch"]
    assert "no revision attribute" in doc["findings"][0]["message"]
    data["stolen_time"]["revision"] = 0
    data["stolen_time"]["stride"] = 128
    stride = write_config(tmp_path, "stride.json", data)
    code, doc, _ = run_diff(capsys, old, stride)
    assert code == 1 and codes(doc, "error") == ["stride-changed"]


def test_ram_memslot_newly_over_the_region(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two configs: the destination adds a RAM memslot over the (unchanged) region."""
    data = config_of(tmp_path, str(EXAMPLES / "qemu-virt-8cpu.yaml"))
    old = write_config(tmp_path, "old.json", data)
    data["memslots"].append(
        {"slot": 9, "guest_phys_addr": 0x09000000, "memory_size": 0x1000000, "purpose": "ram"}
    )
    new = write_config(tmp_path, "new.json", data)
    code, doc, _ = run_diff(capsys, old, new)
    assert code == 1
    assert "ram-covers-region" in codes(doc, "error")
    assert codes(doc, "warning") == ["ram-layout-changed"]


def test_ipa_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = config_of(tmp_path, str(EXAMPLES / "generic-hole.yaml"))
    old = write_config(tmp_path, "old.json", data)
    data["ipa_bits"] = 44
    wider = write_config(tmp_path, "wider.json", data)
    code, doc, _ = run_diff(capsys, old, wider)
    assert (code, codes(doc)) == (0, ["ipa-bits-changed", "compatible"])
    high = config_of(tmp_path, str(EXAMPLES / "numa-2node.yaml"))
    high["ipa_bits"] = 40
    base = min(v["pvtime_ipa"] for v in high["vcpus"])
    if base < 1 << 32:  # move the region above 4 GiB, then shrink the IPA space under it
        for v in high["vcpus"]:
            v["pvtime_ipa"] += 1 << 36
    old = write_config(tmp_path, "high.json", high)
    high["ipa_bits"] = 32
    new = write_config(tmp_path, "narrow.json", high)
    code, doc, _ = run_diff(capsys, old, new)
    assert code == 1 and "ipa-beyond-ipa-space" in codes(doc, "error")


NEITHER = "neither a VM description nor a pvdesc.hypervisor/1 hypervisor config: "


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "YAML syntax: expected ',' or '}'"),
        ('{"format": "pvdesc.hypervisor/1",}', "not JSON: Expecting property name"),
        ('{"format": "other"}', NEITHER + '"format" is "other"'),
        ("[1, 2]", NEITHER + "the JSON value is an array, not an object"),
        ("null", NEITHER + "the JSON value is null, not an object"),
        ("just some words\n", NEITHER + "its YAML is a scalar, not a mapping"),
        ("- a\n- b\n", NEITHER + "its YAML is a list, not a mapping"),
        ("# nothing but a comment\n", NEITHER + "its YAML is empty, not a mapping"),
        (b"\xd0\x0d\xfe\xed\x00\x00", "not UTF-8 text (byte 0)"),
        ("name: x\nvcpus: 0\nmemory: []\n", "vcpus: 0 is less than the minimum of 1"),
    ],
)
@pytest.mark.parametrize("name", ["bad.json", "bad.yaml"])
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | bytes,
    message: str,
    name: str,
) -> None:
    good = str(EXAMPLES / "qemu-virt.yaml")
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    bad = str(path)
    for argv in (["diff", good, bad], ["diff", bad, good]):
        code, out, err = cli_in_process(argv, capsys)
        assert code == 2 and out == ""
        assert err.startswith(f"pvdesc: error: {bad}") and err.count("\n") == 1
        assert message in err


def _json_syntax(example: str, *, indent: int | None) -> str:
    """An example description rewritten in JSON syntax (YAML is a superset of JSON)."""
    text = json.dumps(yaml.safe_load((EXAMPLES / example).read_text()), indent=indent)
    assert text.startswith("{")
    return text


@pytest.mark.parametrize("name", ["desc.json", "desc.hypervisor.json", "desc.yaml", "desc"])
@pytest.mark.parametrize("indent", [None, 2])
def test_description_in_json_syntax_is_a_description(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, indent: int | None
) -> None:
    example = "linux-carve-reserved.yaml"
    text = _json_syntax(example, indent=indent)
    path = write(tmp_path, name, "\n  " + text)
    for old, new in ((path, str(EXAMPLES / example)), (str(EXAMPLES / example), path)):
        code, doc, _ = run_diff(capsys, old, new)
        assert (code, codes(doc)) == (0, ["compatible"]), doc
    assert sides.kind(text.encode(), path) is sides.InputKind.DESCRIPTION
    # Only a description knows what the DT calls RAM: the region carved out of it.
    side = sides.side_from_bytes(text.encode(), path)
    assert side.usable_ram is not None and side.ram_over(side.region) == ()


def test_json_description_with_a_bad_value_reports_the_description_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads(_json_syntax("generic-hole.yaml", indent=2))
    data["vcpus"] = 0
    path = write(tmp_path, "desc.json", json.dumps(data, indent=2))
    code, out, err = cli_in_process(["diff", path, path], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"pvdesc: error: {path}:") and err.count("\n") == 1
    assert "vcpus: 0 is less than the minimum of 1" in err


@pytest.mark.parametrize("name", ["x.hypervisor.json", "x.yaml", "x"])
def test_hypervisor_config_is_a_config_whatever_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    example = str(EXAMPLES / "linux-carve-reserved.yaml")
    data = config_of(tmp_path, example)
    built = (tmp_path / "built" / "linux-carve-reserved.hypervisor.json").read_bytes()
    path = write(tmp_path, name, built.decode())
    code, doc, _ = run_diff(capsys, path, example)
    assert (code, codes(doc)) == (0, ["compatible"]), doc
    assert sides.kind(built, path) is sides.InputKind.CONFIG
    side = sides.side_from_bytes(built, path)
    assert side.usable_ram is None and side.max_vcpus == len(data["vcpus"])


def test_missing_file_and_duplicate_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.yaml")
    code, _, err = cli_in_process(["diff", missing, missing], capsys)
    assert (code, err) == (2, f"pvdesc: error: {missing}: cannot read: No such file or directory\n")
    data = config_of(tmp_path, str(EXAMPLES / "generic-hole.yaml"))
    data["vcpus"][1]["id"] = 0
    dup = write_config(tmp_path, "dup.json", data)
    code, _, err = cli_in_process(["diff", dup, dup], capsys)
    assert (code, err) == (2, f"pvdesc: error: {dup}: vcpus lists a vCPU id twice\n")


def test_compare_is_pure_and_reflexive() -> None:
    lay = build.plan(EXAMPLES / "uefi-acpi-numa.yaml").layout
    side = sides.side_from_layout(lay, "a")
    findings = diff.compare(side, side)
    assert diff.compatible(findings)
    assert [f.severity for f in findings] == [Severity.INFO]


GENERIC = """name: g
vcpus: {vcpus}
max_vcpus: {max_vcpus}
memory:
  - {{base: 0x40000000, size: 1G}}
stolen_time: {{placement: fixed, base: 0x090a0000}}
"""


def test_shrinking_below_online_vcpus_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue class 12: vcpus 12 / max 16 -> max 8: vCPUs 8-11 are online and have nowhere to go."""
    old = write(tmp_path, "old.yaml", GENERIC.format(vcpus=12, max_vcpus=16))
    new = write(tmp_path, "new.yaml", GENERIC.format(vcpus=8, max_vcpus=8))
    code, doc, text = run_diff(capsys, old, new)
    assert code == 1 and doc["compatible"] is False
    assert codes(doc, "error") == ["online-vcpus-dropped"]
    (err,) = [f for f in doc["findings"] if f["code"] == "online-vcpus-dropped"]
    assert err["message"].startswith("vCPUs 8-11 are online at boot on ")
    # vCPUs 12-15 were possible but not online: a warning, as before.
    (warn,) = [f for f in doc["findings"] if f["code"] == "vcpus-only-on-source"]
    assert warn["severity"] == "warning" and warn["message"].startswith("vCPUs 12-15 exist only")
    assert "online-vcpus-dropped" in text


def test_shrinking_only_offline_vcpus_stays_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(tmp_path, "old.yaml", GENERIC.format(vcpus=8, max_vcpus=16))
    new = write(tmp_path, "new.yaml", GENERIC.format(vcpus=8, max_vcpus=8))
    code, doc, _ = run_diff(capsys, old, new)
    assert (code, codes(doc)) == (0, ["vcpus-only-on-source", "compatible"])


@pytest.mark.parametrize(
    "example", ["linux-carve-reserved.yaml", "uefi-acpi-numa.yaml", "crosvm.yaml"]
)
def test_a_layouts_side_is_what_its_config_reads_back(example: str) -> None:
    """hypervisor.target (Layout -> Target) agrees with the writer read back by the reader."""
    lay = build.plan(EXAMPLES / example).layout
    written = hypervisor.dumps(lay).encode()
    assert allocate.target(lay, "a") == hypervisor.target_from_config(written, "a")
    side = sides.side_from_layout(lay, "a")
    assert side.usable_ram is not None and side.online == lay.description.vcpus
    assert side._replace(usable_ram=None, online=None) == sides.side_from_config(written, "a")
