"""pvdesc check against real DTBs dumped by qemu-system-aarch64 (TCG) in the test run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import QEMU_PVTIME, QEMU_PVTIME_SIZE, cli_subprocess, qemu_dtb

from pvdesc.read import dtb

NUMA = (
    "-smp", "2", "-m", "2G",
    "-object", "memory-backend-ram,id=m0,size=1G",
    "-object", "memory-backend-ram,id=m1,size=1G",
    "-numa", "node,memdev=m0,cpus=0", "-numa", "node,memdev=m1,cpus=1",
)  # fmt: skip

# (name, qemu args, vCPUs, an address inside RAM, the /memory node holding it)
CASES = [
    ("single", ("-m", "1G"), 1, 0x60000000, "/memory@40000000"),
    ("numa", NUMA, 2, 0x90000000, "/memory@80000000"),
    ("hotplug", ("-m", "1G,slots=4,maxmem=8G"), 1, 0x40000000, "/memory@40000000"),
    # virt needs GICv3 for more than 8 vCPUs (GICv2 stops at 8).
    ("smp64", ("-smp", "64", "-m", "1G"), 64, 0x7FFF0000, "/memory@40000000"),
]


@pytest.mark.parametrize(("name", "args", "vcpus", "inside", "node"), CASES)
def test_qemu_dtb(
    tmp_path: Path, name: str, args: tuple[str, ...], vcpus: int, inside: int, node: str
) -> None:
    path = qemu_dtb(tmp_path, name, *args)
    cpus = [s for s in dtb.load(path).skipped if s.path.startswith("/cpus/cpu@")]
    assert len(cpus) == vcpus  # the DTB really describes the vCPUs asked for
    own = f"{QEMU_PVTIME:#x}:{QEMU_PVTIME_SIZE:#x}"
    res = cli_subprocess("check", "--dtb", str(path), "--region", own, "--vcpus", str(vcpus),
                         "--format", "json")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "safe"
    assert [f["code"] for f in doc["findings"]] == ["memslots-not-checked"]

    bad = cli_subprocess("check", "--dtb", str(path), "--region", f"{inside:#x}:64K", "--vcpus",
                         str(vcpus), "--format", "json")  # fmt: skip
    assert bad.returncode == 1, bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["verdict"] == "unsafe"
    errors = [f for f in doc["findings"] if f["severity"] == "error"]
    assert [(f["code"], f["source"]) for f in errors] == [("ipa-in-ram", f"{node} reg[0]")]
    assert errors[0]["range"] == [inside, inside + 64 * vcpus]


def test_qemu_dtb_region_on_a_device(tmp_path: Path) -> None:
    path = qemu_dtb(tmp_path, "dev", "-m", "1G")
    res = cli_subprocess("check", "--dtb", str(path), "--region", "0x09000000:64K", "--vcpus", "1")
    assert res.returncode == 1
    assert "region-overlaps-device: /pl011@9000000 reg[0]" in res.stdout
