"""Every shipped example builds, and every emitted DTB passes libfdt, dtc -E and dt-validate.

The round trip reads each DTB back with libfdt (reg decoded with the parent's
cells) and must give exactly the layout's RAM, reserved and excluded ranges.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import libfdt
import pytest
from helpers import ROOT, DtValidate, cli_subprocess, decode_reg, dtc_check, libfdt_check, run, walk

from pvdesc.core.model import Describe
from pvdesc.emit import build, hypervisor

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_there_are_enough_examples() -> None:
    modes = {build.plan(p).layout.describe for p in EXAMPLES}
    assert len(EXAMPLES) >= 4
    assert {Describe.NONE, Describe.EXCLUDE, Describe.RESERVED_MEMORY} <= modes
    assert any(build.plan(p).layout.description.numa for p in EXAMPLES)


@pytest.fixture(scope="module", params=EXAMPLES, ids=lambda p: p.stem)
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[build.BuildResult, Path]:
    out = tmp_path_factory.mktemp(request.param.stem)
    res = cli_subprocess("build", str(request.param), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    return build.plan(request.param), out


def test_cli_summary_and_files(built: tuple[build.BuildResult, Path]) -> None:
    result, out = built
    name = result.layout.description.name
    for suffix in (".dts", ".dtb", ".hypervisor.json", ".manifest.json"):
        assert (out / f"{name}{suffix}").is_file()
    assert not list(out.glob(".*.tmp")), "temp files left behind"


def test_manifest_pairs_files(built: tuple[build.BuildResult, Path]) -> None:
    result, out = built
    name = result.layout.description.name
    man = json.loads((out / f"{name}.manifest.json").read_text())
    assert man["format"] == "pvdesc.manifest/1"
    assert man["boot"] == str(result.layout.description.boot)
    listed = {f["path"] for f in man["files"]}
    assert {f"{name}.dts", f"{name}.dtb", f"{name}.hypervisor.json"} <= listed
    for f in man["files"]:
        data = (out / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
        assert len(data) == f["bytes"]
    assert man["description"]["sha256"] == hashlib.sha256(result.loaded.text).hexdigest()


def test_dtb_passes_libfdt_and_dtc(built: tuple[build.BuildResult, Path]) -> None:
    result, out = built
    dtb = out / f"{result.layout.description.name}.dtb"
    libfdt_check(dtb.read_bytes())
    dtc_check(dtb)


def test_dtb_passes_dt_validate(
    built: tuple[build.BuildResult, Path], dt_validate: DtValidate
) -> None:
    result, out = built
    dtb = out / f"{result.layout.description.name}.dtb"
    assert dt_validate.errors(dtb) == []


def test_dts_compiles_to_the_same_dtb(built: tuple[build.BuildResult, Path]) -> None:
    result, out = built
    name = result.layout.description.name
    again = out / "recompiled.dtb"
    res = run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(again), str(out / f"{name}.dts")])
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert again.read_bytes() == (out / f"{name}.dtb").read_bytes()


def test_round_trip_ranges(built: tuple[build.BuildResult, Path]) -> None:
    result, out = built
    lay = result.layout
    fdt = libfdt_check((out / f"{lay.description.name}.dtb").read_bytes())
    assert libfdt.fdt_address_cells(fdt._fdt, 0) == 2
    assert libfdt.fdt_size_cells(fdt._fdt, 0) == 2
    memory: list[tuple[int, int, int | None]] = []
    reserved: list[tuple[int, int]] = []
    for path, off in walk(fdt):
        if path.startswith("/memory@"):
            assert fdt.getprop(off, "device_type").as_str() == "memory"
            node = fdt.getprop(off, "numa-node-id", (libfdt.NOTFOUND,))
            numa = None if node == -libfdt.NOTFOUND else node.as_uint32()
            memory += [(b, s, numa) for b, s in decode_reg(fdt, off)]
            assert path == f"/memory@{decode_reg(fdt, off)[0][0]:x}"
        elif path.startswith("/reserved-memory/"):
            assert fdt.getprop(off, "no-map") == b""  # an empty (boolean) property
            reserved += decode_reg(fdt, off)
    expected = [(n.range.base, n.range.size, n.numa_node) for n in lay.memory_nodes]
    assert sorted(memory) == sorted(expected)
    assert reserved == [(r.base, r.size) for r in lay.reserved]
    region = (lay.region.base, lay.region.end)
    covered = any(b <= region[0] and region[1] <= b + s for b, s, _ in memory)
    if lay.describe is Describe.RESERVED_MEMORY:
        assert covered and reserved == [(lay.region.base, lay.region.size)]
        off = fdt.path_offset("/reserved-memory")
        assert fdt.getprop(off, "ranges") == b""
        assert libfdt.fdt_address_cells(fdt._fdt, off) == 2
        assert libfdt.fdt_size_cells(fdt._fdt, off) == 2
    else:
        assert not any(b < region[1] and region[0] < b + s for b, s, _ in memory)
        assert reserved == []


def test_hypervisor_config_shape(built: tuple[build.BuildResult, Path]) -> None:
    result, out = built
    lay = result.layout
    desc = lay.description
    cfg = json.loads((out / f"{desc.name}.hypervisor.json").read_text())
    assert cfg == hypervisor.config(lay)
    assert list(cfg) == ["format", "vm", "vmm", "ipa_bits", "memslots", "stolen_time", "vcpus"]
    assert cfg["format"] == "pvdesc.hypervisor/1"
    for slot in cfg["memslots"]:
        assert list(slot) == ["slot", "guest_phys_addr", "memory_size", "purpose"]
        assert all(isinstance(slot[k], int) for k in ("slot", "guest_phys_addr", "memory_size"))
    st = cfg["stolen_time"]
    assert st == {
        "base": lay.region.base,
        "size": lay.region.size,
        "stride": 64,
        "revision": 0,
        "memslot": st["memslot"],
    }
    assert [v["id"] for v in cfg["vcpus"]] == list(range(desc.max_vcpus))
    assert all(v["pvtime_ipa"] == st["base"] + 64 * v["id"] for v in cfg["vcpus"])
    slot = cfg["memslots"][st["memslot"]]
    assert slot["guest_phys_addr"] <= st["base"]
    assert st["base"] + st["size"] <= slot["guest_phys_addr"] + slot["memory_size"]
