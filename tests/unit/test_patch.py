"""``pvdesc build --into``: patch real QEMU DTBs with libfdt and diff the decompiled trees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import EXAMPLES, cli_in_process, decompile, dtc_check, qemu_dump

QEMU_BASE = [
    "qemu-system-aarch64", "-accel", "tcg", "-cpu", "max", "-smp", "4", "-m", "2G",
    "-nic", "none", "-display", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def base_dtb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qemu") / "base.dtb"
    qemu_dump([*QEMU_BASE, "-machine", f"virt,gic-version=3,dumpdtb={path}"], path)
    return path


def _blocks(dts: str) -> dict[str, str]:
    """Top-level nodes of a ``dtc -s`` decompile: name -> text (root properties under '/')."""
    out: dict[str, str] = {}
    parts = re.split(r"\n\n(?=\t[^\t])", dts)
    out["/"] = parts[0]
    for p in parts[1:]:
        out[p.strip().split(" ")[0]] = p
    return out


def _build(
    tmp_path: Path, desc: Path, base: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    code, _, err = cli_in_process(
        ["build", "-q", str(desc), "-o", str(tmp_path / "out"), "--into", str(base)], capsys
    )
    return code, err


def test_into_reserved_memory_adds_exactly_the_intended_nodes(
    base_dtb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _build(tmp_path, EXAMPLES / "linux-carve-reserved.yaml", base_dtb, capsys)
    assert code == 0, err
    patched = tmp_path / "out" / "linux-carve-reserved.dtb"
    assert not (tmp_path / "out" / "linux-carve-reserved.dts").exists()
    before, after = _blocks(decompile(base_dtb)), _blocks(decompile(patched))
    assert set(after) - set(before) == {"reserved-memory"}
    assert set(before) - set(after) == set()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == set()  # QEMU -m 2G and the description agree on /memory
    assert after["memory@40000000"].split("\n") == [
        "\tmemory@40000000 {",
        '\t\tdevice_type = "memory";',
        "\t\treg = <0x00 0x40000000 0x00 0x80000000>;",
        "\t};",
    ]
    assert after["reserved-memory"].split("\n")[:9] == [
        "\treserved-memory {",
        "\t\t#address-cells = <0x02>;",
        "\t\t#size-cells = <0x02>;",
        "\t\tranges;",
        "",
        "\t\tstolen-time@bfff0000 {",
        "\t\t\tno-map;",
        "\t\t\treg = <0x00 0xbfff0000 0x00 0x10000>;",
        "\t\t};",
    ]
    # dtc's strict checks: no new warnings compared with QEMU's own blob.
    dtc_check(patched, baseline=base_dtb)


def test_into_qemu_profile_with_matching_memory_changes_nothing(
    base_dtb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desc = tmp_path / "q.yaml"
    desc.write_text(
        "name: q\nvcpus: 4\nvmm: qemu-virt\nmemory:\n  - {base: 0x40000000, size: 2G}\n"
    )
    code, err = _build(tmp_path, desc, base_dtb, capsys)
    assert code == 0, err
    assert decompile(tmp_path / "out" / "q.dtb") == decompile(base_dtb)
    args = (tmp_path / "out" / "q.qemu.args").read_text()
    assert f"-dtb {tmp_path / 'out' / 'q.dtb'}" in args


def test_into_numa_split_replaces_memory_nodes(
    base_dtb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _build(tmp_path, EXAMPLES / "qemu-virt.yaml", base_dtb, capsys)
    assert code == 0, err
    before, after = (
        _blocks(decompile(base_dtb)),
        _blocks(decompile(tmp_path / "out" / "qemu-virt.dtb")),
    )
    assert set(after) - set(before) == {"memory@80000000"}
    assert {k for k in before if before[k] != after[k]} == {"memory@40000000"}
    assert "numa-node-id = <0x01>;" in after["memory@80000000"]


def test_into_refuses_region_colliding_with_base_device(
    base_dtb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desc = tmp_path / "x.yaml"
    desc.write_text(
        "name: x\nvcpus: 2\nmemory:\n  - {base: 0x40000000, size: 1G}\n"
        "stolen_time:\n  placement: fixed\n  base: 0x09010000\n"
    )
    code, err = _build(tmp_path, desc, base_dtb, capsys)
    assert code == 2
    assert err == (
        f"pvdesc: error: {base_dtb}: base DTB node /pl031@9010000 reg[0] 0x9010000-0x9010fff "
        "overlaps the stolen-time region 0x9010000-0x901ffff\n"
    )
    assert not (tmp_path / "out").exists()


def test_into_refuses_region_inside_pcie_window(
    base_dtb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desc = tmp_path / "x.yaml"
    desc.write_text(
        "name: x\nvcpus: 2\nmemory:\n  - {base: 0x40000000, size: 1G}\n"
        "stolen_time:\n  placement: fixed\n  base: 0x20000000\n"
    )
    code, err = _build(tmp_path, desc, base_dtb, capsys)
    assert code == 2 and "/pcie@10000000 ranges[" in err and err.count("\n") == 1


@pytest.mark.parametrize("kind", ["garbage", "truncated", "missing"])
def test_into_bad_base_is_one_line(
    kind: str, base_dtb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.dtb"
    if kind == "garbage":
        bad.write_bytes(b"not a devicetree at all" * 10)
    elif kind == "truncated":
        bad.write_bytes(base_dtb.read_bytes()[:3000])
    code, err = _build(tmp_path, EXAMPLES / "generic-hole.yaml", bad, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"pvdesc: error: {bad}: ")
    assert ("cannot read base DTB" if kind == "missing" else "fdt_check_full") in err
    assert not (tmp_path / "out").exists()
