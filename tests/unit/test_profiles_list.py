"""``pvdesc profiles``, ``vmm_version`` and the VMM version in every generated file's header."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import EXAMPLES, cli_in_process

from pvdesc import api
from pvdesc.core.model import Vmm
from pvdesc.description import profiles, vmms
from pvdesc.description.load import load

TEXT_OUTPUTS = ("dts", "dtso", "h", "rs", "qemu.args", "lkvm.args", "crosvm.args", "ssdt.dsl")


def _listed(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code, out, err = cli_in_process(["profiles", "--format", "json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["format"] == "pvdesc.profiles/1"
    listed: list[dict[str, Any]] = doc["profiles"]  # JSON: checked by the assertions
    return listed


def test_every_profile_is_listed_with_its_version_and_map(
    capsys: pytest.CaptureFixture[str],
) -> None:
    listed = _listed(capsys)
    assert [p["vmm"] for p in listed if p["default"]] == [v.value for v in vmms.PROFILES]
    assert {p["vmm"] for p in listed} == {v.value for v in Vmm}
    for entry in listed:
        prof = profiles.profile(Vmm(entry["vmm"]), entry["version"] or None)
        assert entry["version_text"] == prof.version_text != ""
        rows = entry["memory_map"]
        assert isinstance(rows, list)
        assert [r["base"] for r in rows] == sorted(r["base"] for r in rows)
        if prof.vmm is Vmm.GENERIC_KVM:
            assert entry["version"] == "" and rows == []
            continue
        assert (entry["version"] and entry["upstream"]) or not entry["supported"]
        if prof.stolen_time is not None:
            slot = [r for r in rows if r["kind"] == "stolen-time"]
            assert slot == [
                {
                    "kind": "stolen-time",
                    "name": prof.stolen_time.name,
                    "base": prof.stolen_time.base,
                    "size": prof.stolen_time.size,
                    "confirmed": True,
                }
            ]


def test_crosvm_lists_both_maps(capsys: pytest.CaptureFixture[str]) -> None:
    crosvm = [p for p in _listed(capsys) if p["vmm"] == "crosvm"]
    slots = {
        (p["version"], p["default"]): next(
            r["base"] for r in p["memory_map"] if r["kind"] == "stolen-time"
        )
        for p in crosvm
    }
    # AARCH64_MMIO_BASE - 64 KiB since 0465b61b; AARCH64_PROTECTED_VM_FW_START - 64 KiB before
    assert slots == {("f1e797a6", True): 0x01FF0000, ("00ab01e9", False): 0x7FDF0000}
    code, text, _ = cli_in_process(["profiles"], capsys)
    assert code == 0
    assert "crosvm  crosvm 00ab01e9 (2022-03-10); the map before 0465b61b" in text
    assert "(vmm_version: 00ab01e9)" in text
    assert "  stolen-time  AARCH64_PVTIME_IPA_START  0x007fdf0000  0x00010000  64 KiB" in text


def test_vmm_version_picks_the_older_crosvm_map(tmp_path: Path) -> None:
    text = (EXAMPLES / "crosvm.yaml").read_text()
    newest = api.build_text(text)
    older = api.build_text(text.replace("vmm: crosvm\n", "vmm: crosvm\nvmm_version: 00ab01e9\n"))
    assert newest.hypervisor_config.region_base == 0x01FF0000
    assert older.hypervisor_config.region_base == 0x7FDF0000
    assert json.loads(older.output("manifest.json"))["vmm_version"] == "00ab01e9"
    assert json.loads(newest.output("manifest.json"))["vmm_version"] == "f1e797a6"
    assert (
        "VMM: crosvm, memory map of crosvm 00ab01e9 (2022-03-10)"
        in older.output("crosvm.args").decode()
    )
    # and the default, written out, is the same as nothing written
    pinned = api.build_text(text.replace("vmm: crosvm\n", "vmm: crosvm\nvmm_version: f1e797a6\n"))
    assert pinned.output("dtb") == newest.output("dtb")


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_text_output_names_the_vmm_version(example: str) -> None:
    result = api.build(EXAMPLES / example)
    desc = load(EXAMPLES / example).description
    prof = profiles.for_description(desc)
    line = f"VMM: {profiles.model_text(desc)}."
    assert prof.version_text in line
    seen = 0
    for suffix in (*TEXT_OUTPUTS, "srat.dsl"):
        name = f"{result.name}.{suffix}"
        if name in result.outputs:
            head = result.outputs[name].decode().splitlines()[:12]
            assert any(line in h for h in head), (name, head)
            seen += 1
    assert seen >= 2
