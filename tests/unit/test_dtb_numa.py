"""numa-node-id on memory nodes: read by the DTB reader and drawn by ``pvdesc map --dtb``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import ROOT, cli_subprocess, run

from pvdesc.core.ranges import Range
from pvdesc.errors import DTError
from pvdesc.read import dtb

DTS = """/dts-v1/;
/ {
    #address-cells = <2>; #size-cells = <2>;
    memory@40000000 { device_type = "memory"; reg = <0 0x40000000 0 0x40000000>; %s };
    memory@80000000 { device_type = "memory"; reg = <0 0x80000000 0 0x40000000>; };
};
"""


def _dtb(tmp_path: Path, extra: str) -> Path:
    src, out = tmp_path / "t.dts", tmp_path / "t.dtb"
    src.write_text(DTS % extra)
    res = run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(out), str(src)])
    assert res.returncode == 0, res.stderr
    return out


def test_reader_returns_numa_node(tmp_path: Path) -> None:
    path = _dtb(tmp_path, "numa-node-id = <3>;")
    tree = dtb.parse(path.read_bytes(), str(path))
    assert [(m.range, m.numa_node) for m in tree.memory] == [
        (Range(0x40000000, 1 << 30), 3),
        (Range(0x80000000, 1 << 30), None),
    ]


def test_malformed_numa_node_is_one_line_error(tmp_path: Path) -> None:
    path = _dtb(tmp_path, "numa-node-id = <0 1>;")
    with pytest.raises(DTError, match="numa-node-id must be one u32 cell"):
        dtb.parse(path.read_bytes(), str(path))


def test_map_dtb_shows_numa_nodes(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert (
        cli_subprocess(
            "build", "-q", str(ROOT / "examples" / "numa-2node.yaml"), "-o", str(out)
        ).returncode
        == 0
    )
    env = {**os.environ, "NO_COLOR": "1"}
    res = cli_subprocess(
        "map", "--dtb", str(out / "numa-2node.dtb"), "--region", "0x23fff0000:64K", env=env
    )
    assert res.returncode == 0, res.stderr
    assert "/memory@40000000 reg[0] node 0" in res.stdout
    assert "/memory@240000000 reg[0] node 1" in res.stdout
