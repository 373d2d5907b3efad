"""ACPI tables: round trip through iasl, checksums, acpiexec evaluation, SRAT contents, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import (
    EXAMPLES,
    ROOT,
    checksum_broken,
    checksum_valid,
    header,
    outputs,
    parse_srat,
    plan_example,
)

from pvdesc.core.ranges import Range
from pvdesc.description.load import loads
from pvdesc.emit import acpi, build
from pvdesc.errors import AcpiError
from pvdesc.layout.allocate import allocate
from pvdesc.tools import acpica

ACPI_EXAMPLES = ["uefi-acpi-hole", "uefi-acpi-numa"]


def _aml_outputs() -> list[tuple[str, str, bytes]]:
    out = []
    for ex in ACPI_EXAMPLES:
        for name, data in outputs(plan_example(ex)).items():
            if name.endswith(".aml"):
                out.append((ex, name, data))
    return out


AML = _aml_outputs()


def test_every_acpi_example_emits_the_expected_tables() -> None:
    names = {(ex, name) for ex, name, _ in AML}
    assert names == {
        ("uefi-acpi-hole", "uefi-acpi-hole.ssdt.aml"),
        ("uefi-acpi-numa", "uefi-acpi-numa.ssdt.aml"),
        ("uefi-acpi-numa", "uefi-acpi-numa.srat.aml"),
    }


@pytest.mark.parametrize(("example", "name", "aml"), AML, ids=[n for _, n, _ in AML])
def test_aml_round_trips_and_checksums(example: str, name: str, aml: bytes) -> None:
    # Our own checksum computation (bytes sum to 0 mod 256) and header length.
    assert checksum_valid(aml)
    hdr = header(aml)
    assert hdr.length == len(aml)
    desc = plan_example(example).layout.description
    # iasl pads short IDs with NULs.
    assert hdr.oem_id.rstrip(b"\0") == desc.acpi.oem_id.encode()
    assert hdr.oem_table_id.rstrip(b"\0") == desc.acpi.oem_table_id.encode()
    assert hdr.oem_revision == desc.acpi.oem_revision
    # iasl -d, then recompile the disassembly: identical bytes.
    dsl = acpica.disassemble(aml)
    assert acpica.recompile(dsl) == aml


def test_corrupted_checksum_is_reported() -> None:
    aml = checksum_broken(next(data for _, n, data in AML if n.endswith("hole.ssdt.aml")))
    assert not checksum_valid(aml)
    with pytest.raises(AcpiError, match=r"(?i)checksum"):
        acpica.disassemble(aml)


def _resources(aml: bytes) -> str:
    return acpica.acpiexec([aml], ["evaluate \\_SB.PVTM._STA", "resources \\_SB.PVTM"])


def _field(text: str, label: str) -> str:
    m = re.search(rf"^\s*{re.escape(label)}\s*:\s*(.+?)\s*$", text, re.MULTILINE)
    assert m, f"{label} missing from acpiexec output"
    return m.group(1)


def test_ssdt_below_4g_decodes_to_the_region() -> None:
    result = plan_example("uefi-acpi-hole")
    region = result.layout.region
    assert region.end <= 1 << 32
    text = _resources(outputs(result)["uefi-acpi-hole.ssdt.aml"])
    assert re.search(r"\[Integer\] = 0+F$", text, re.MULTILINE), "_STA is not 0xF"
    crs = text.split("Evaluating _CRS", 1)[1].split("Resource Conversion", 1)[0]
    # Exactly one descriptor: a 32-bit fixed range (always a consumer: it has no producer bit).
    assert re.findall(r"^\[\d\d\] (.*)$", crs, re.MULTILINE) == [
        "32-Bit Fixed Memory Range Resource",
        "EndTag Resource",
    ]
    assert int(_field(crs, "Address"), 16) == region.base
    assert int(_field(crs, "Address Length"), 16) == region.size
    # No OperationRegion in the compiled table (docs/acpi.md s1.2), checked on the disassembly.
    assert "OperationRegion" not in acpica.disassemble(outputs(result)["uefi-acpi-hole.ssdt.aml"])


def _fixed_high_layout_text() -> str:
    return """
name: fixed-high
vcpus: 4
ipa_bits: 40
boot: uefi-acpi
memory:
  - {base: 0x40000000, size: 2G}
stolen_time:
  placement: fixed
  base: 0x8000000000
"""


@pytest.mark.parametrize("source", ["numa-carve", "fixed-high"])
def test_ssdt_above_4g_decodes_to_the_region_as_consumer(source: str) -> None:
    if source == "numa-carve":
        lay = plan_example("uefi-acpi-numa").layout
    else:
        lay = allocate(loads(_fixed_high_layout_text().encode(), "fixed-high.yaml").description)
    region = lay.region
    assert region.base >= 1 << 32
    tables = {t.kind: t.aml for t in acpi.tables(lay)}
    text = _resources(tables["ssdt"])
    assert re.search(r"\[Integer\] = 0+F$", text, re.MULTILINE), "_STA is not 0xF"
    crs = text.split("Evaluating _CRS", 1)[1].split("Resource Conversion", 1)[0]
    assert re.findall(r"^\[\d\d\] (.*)$", crs, re.MULTILINE) == [
        "64-Bit QWORD Address Space Resource",
        "EndTag Resource",
    ]
    assert _field(crs, "Resource Type") == "Memory Range"
    assert _field(crs, "Consumer/Producer") == "ResourceConsumer"
    assert int(_field(crs, "Address Minimum"), 16) == region.base
    assert int(_field(crs, "Address Maximum"), 16) == region.last
    assert int(_field(crs, "Address Length"), 16) == region.size


def test_acpiexec_failure_is_detected_despite_exit_0() -> None:
    aml = outputs(plan_example("uefi-acpi-hole"))["uefi-acpi-hole.ssdt.aml"]
    with pytest.raises(AcpiError, match="failed with status"):
        acpica.acpiexec([aml], ["evaluate \\_SB.NOPE._CRS"])


def test_srat_parsed_from_binary() -> None:
    result = plan_example("uefi-acpi-numa")
    lay = result.layout
    desc = lay.description
    hdr, mem, gicc = parse_srat(outputs(result)["uefi-acpi-numa.srat.aml"])
    assert hdr.revision == 3
    # Every Memory Affinity range is a RAM bank, minus the region where it was carved.
    expected = []
    for bank in desc.memory:
        for piece in bank.range.minus(lay.region):
            expected.append((bank.numa_node, piece.base, piece.size))
    assert sorted((m.node, m.base, m.size) for m in mem) == sorted(expected)
    assert lay.host_bank is not None  # this example carves, so one bank must shrink
    assert len(mem) == len(desc.memory)
    for m in mem:
        assert not Range(m.base, m.size).overlaps(lay.region)
        assert m.flags == 1  # enabled, not hot-pluggable, not non-volatile
    # One GICC Affinity per possible vCPU, UIDs 0..max_vcpus-1, nodes in contiguous blocks.
    assert [g.uid for g in gicc] == list(range(desc.max_vcpus))
    assert all(g.flags == 1 for g in gicc)
    half = desc.max_vcpus // 2
    assert [g.node for g in gicc] == [0] * half + [1] * half


def test_vcpu_node_blocks_are_balanced() -> None:
    text = (EXAMPLES / "uefi-acpi-numa.yaml").read_text().replace("max_vcpus: 64", "max_vcpus: 7")
    text = text.replace("vcpus: 8", "vcpus: 2", 1)
    desc = loads(text.encode(), "x.yaml").description
    nodes = [acpi.vcpu_node(desc, i) for i in range(7)]
    assert nodes == [0, 0, 0, 0, 1, 1, 1]


def test_no_srat_without_numa() -> None:
    assert not any(n.endswith(".srat.aml") for n in outputs(plan_example("uefi-acpi-hole")))


def test_compile_error_maps_to_template_line() -> None:
    lay = plan_example("uefi-acpi-hole").layout
    source = acpi.ssdt_source(lay)
    broken = source.replace("Memory32Fixed (ReadOnly,", "Memory32Fixed (ReadOnlyX,")
    assert broken != source
    template = (ROOT / "templates" / acpi.SSDT_TEMPLATE).read_text().splitlines()
    want = next(i for i, t in enumerate(template, 1) if "Memory32Fixed" in t)
    with pytest.raises(AcpiError) as info:
        acpica.compile_asl(broken, template=acpi.SSDT_TEMPLATE, name="ssdt")
    err = info.value
    assert err.where == f"templates/{acpi.SSDT_TEMPLATE}:{want}"
    assert "\n" not in str(err)
    assert "error" in err.message


def test_template_line_follows_loops() -> None:
    lay = plan_example("uefi-acpi-numa").layout
    source = acpi.srat_source(lay)
    template = (ROOT / "templates" / acpi.SRAT_TEMPLATE).read_text().splitlines()
    uid_line = next(i for i, t in enumerate(template, 1) if "Acpi Processor UID" in t)
    rendered = source.splitlines()
    last_uid = max(i for i, t in enumerate(rendered, 1) if "Acpi Processor UID" in t)
    assert acpica.template_line(acpi.SRAT_TEMPLATE, source, last_uid) == uid_line


def test_quote_in_oem_id_is_refused(tmp_path: Path) -> None:
    text = (
        (EXAMPLES / "uefi-acpi-hole.yaml").read_text().replace("oem_id: PVDESC", "oem_id: 'PV\"X'")
    )
    path = tmp_path / "q.yaml"
    path.write_text(text)
    with pytest.raises(AcpiError) as info:
        build.plan(path)
    assert str(info.value).startswith(f"{path}:")
    assert "acpi.oem_id" in str(info.value)
