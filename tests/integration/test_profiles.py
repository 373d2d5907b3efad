"""VMM profiles: examples build, fixed values are enforced, QEMU agrees, C/Rust outputs work."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import libfdt
import pytest
from helpers import EXAMPLES, SLOW, cli_in_process, dtc_check, qemu_dump, qemu_tcg_argv, run

from pvdesc.core.model import Vmm
from pvdesc.core.ranges import Range
from pvdesc.description import profiles, vmms
from pvdesc.description.vmms import qemu_virt
from pvdesc.emit import build

PROFILE_EXAMPLES = {
    "qemu-virt": ["qemu-virt.qemu.args"],
    "kvmtool": ["kvmtool.lkvm.args"],
    "crosvm": ["crosvm.crosvm.args"],
    "firecracker": [],
}


@pytest.mark.parametrize("name", sorted(PROFILE_EXAMPLES))
def test_profile_example_builds(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli_in_process(
        ["build", "-q", str(EXAMPLES / f"{name}.yaml"), "-o", str(tmp_path)], capsys
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / f"{name}.manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    expected = {f"{name}.{s}" for s in ("dts", "dtb", "dtso", "dtbo", "hypervisor.json")}
    expected |= set(PROFILE_EXAMPLES[name])
    assert listed == expected
    assert manifest["vmm"] == name
    dtc_check(tmp_path / f"{name}.dtb")
    hv = json.loads((tmp_path / f"{name}.hypervisor.json").read_text())
    assert set(hv) == {"format", "vm", "vmm", "ipa_bits", "memslots", "stolen_time", "vcpus"}


def test_profile_regions() -> None:
    got = {}
    for name in ("qemu-virt", "kvmtool", "crosvm", "firecracker"):
        lay = build.plan(EXAMPLES / f"{name}.yaml").layout
        got[name] = (lay.region.base, lay.region.size, lay.dedicated_memslot)
    assert got == {
        "qemu-virt": (0x090A0000, 0x1000, True),  # 8 max vCPUs * 64 -> one 4 KiB page
        "kvmtool": (0x01020000, 0x10000, True),
        "crosvm": (0x01FF0000, 0x10000, True),
        "firecracker": (0x801FE000, 2 * 64, False),
    }
    fc = build.plan(EXAMPLES / "firecracker.yaml").layout
    assert [n.range for n in fc.memory_nodes] == [Range(0x80200000, 256 * 2**20 - 0x200000)]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "d.yaml"
    p.write_text(text)
    return p


def _fails(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> str:
    desc = _write(tmp_path, text)
    out = tmp_path / "out"
    code, _, err = cli_in_process(["build", str(desc), "-o", str(out)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert err.startswith(f"pvdesc: error: {desc}:")
    return err


def test_cloud_hypervisor_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(
        tmp_path, capsys,
        "name: ch\nvcpus: 2\nvmm: cloud-hypervisor\nmemory:\n  - {base: 0x40000000, size: 1G}\n",
    )  # fmt: skip
    assert ":3:6: vmm: cloud-hypervisor has no arm64 stolen-time" in err
    assert "cloud-hypervisor/cloud-hypervisor#8262" in err


QEMU_HEAD = "name: q\nvcpus: 2\nvmm: qemu-virt\nmemory:\n  - {base: 0x40000000, size: 1G}\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            QEMU_HEAD + "stolen_time:\n  placement: fixed\n  base: 0x10000000\n",
            ":8:9: stolen_time.base: stolen_time.base 0x10000000 conflicts with qemu-virt's "
            "fixed VIRT_PVTIME 0x090a0000",
        ),
        (
            QEMU_HEAD + "stolen_time:\n  placement: carve\n",
            "stolen_time.placement carve conflicts with qemu-virt's fixed VIRT_PVTIME 0x090a0000",
        ),
        (
            QEMU_HEAD + "stolen_time:\n  describe: exclude\n",
            "stolen_time.describe exclude conflicts with qemu-virt's own devicetree",
        ),
        (
            QEMU_HEAD.replace("0x40000000", "0x80000000"),
            "memory[0].base 0x80000000 conflicts with qemu-virt's fixed RAM base 0x40000000",
        ),
        (
            "name: k\nvcpus: 2\nvmm: kvmtool\nmemory:\n  - {base: 0x40000000, size: 1G}\n",
            "memory[0].base 0x40000000 is below kvmtool's lowest RAM base 0x80000000",
        ),
        (
            "name: k\nvcpus: 2\nmax_vcpus: 4\nvmm: kvmtool\nmemory:\n"
            "  - {base: 0x80000000, size: 1G}\n",
            "max_vcpus 4 conflicts with kvmtool: it has no vCPU hotplug",
        ),
        (
            "name: c\nvcpus: 2\nvmm: crosvm\nmemory:\n  - {base: 0x80000000, size: 1G}\n"
            "stolen_time:\n  placement: fixed\n  base: 0x7fdf0000\n",
            "stolen_time.base 0x7fdf0000 conflicts with crosvm's fixed AARCH64_PVTIME_IPA_START "
            "0x01ff0000",
        ),
        (
            "name: c\nvcpus: 2\nvmm: crosvm\nmemory:\n"
            "  - {base: 0x80000000, size: 1G, numa_node: 0}\n",
            "crosvm has no NUMA topology option",
        ),
        (
            "name: f\nvcpus: 2\nvmm: firecracker\nmemory:\n  - {base: 0x80000000, size: 1G}\n",
            "firecracker places the region itself at an offset the reference does not confirm",
        ),
        (
            "name: f\nvcpus: 2\nvmm: firecracker\nmemory:\n  - {base: 0x80000000, size: 1G}\n"
            "stolen_time:\n  placement: fixed\n  base: 0x80400000\n",
            "outside firecracker's system memory 0x80000000-0x801fffff",
        ),
        (
            "name: f\nvcpus: 33\nvmm: firecracker\nmemory:\n  - {base: 0x80000000, size: 1G}\n"
            "stolen_time:\n  placement: fixed\n  base: 0x801f0000\n",
            "max_vcpus 33 exceeds firecracker's limit 32",
        ),
    ],
)
def test_fixed_values_are_enforced(
    text: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert needle in _fails(tmp_path, capsys, text)


def test_same_value_as_profile_is_accepted(tmp_path: Path) -> None:
    desc = _write(tmp_path, QEMU_HEAD + "stolen_time:\n  placement: fixed\n  base: 0x090a0000\n")
    assert build.plan(desc).layout.region == Range(0x090A0000, 0x1000)


def test_qemu_high_memmap_follows_virt_set_memmap() -> None:
    gib = 1 << 30
    small = {e.name: (e.base, e.size) for e in qemu_virt.qemu_high_memmap(2 * gib, 40)}
    assert small == {
        "high-gic-redist2": (256 * gib, 64 << 20),
        "high-pcie-ecam": (256 * gib + (256 << 20), 256 << 20),
        "high-pcie-mmio": (512 * gib, 512 * gib),
    }
    big = {e.name: e.base for e in qemu_virt.qemu_high_memmap(300 * gib, 40)}
    assert big == {
        "high-gic-redist2": 301 * gib,
        "high-pcie-ecam": 301 * gib + (256 << 20),
        "high-pcie-mmio": 512 * gib,
    }
    # 39-bit IPA: the 512 GiB window does not fit and is dropped (compact layout).
    assert [e.name for e in qemu_virt.qemu_high_memmap(2 * gib, 39)] == [
        "high-gic-redist2",
        "high-pcie-ecam",
    ]


def _reg(fdt: libfdt.Fdt, path: str, cells: tuple[int, int] = (2, 2)) -> list[tuple[int, int]]:
    raw = bytes(fdt.getprop(fdt.path_offset(path), "reg"))
    words = struct.unpack(f">{len(raw) // 4}I", raw)
    n = sum(cells)
    out = []
    for i in range(0, len(words), n):
        a = words[i : i + cells[0]]
        s = words[i + cells[0] : i + n]
        out.append((int.from_bytes(b"".join(w.to_bytes(4, "big") for w in a), "big"),
                    int.from_bytes(b"".join(w.to_bytes(4, "big") for w in s), "big")))  # fmt: skip
    return out


def _pcie_ranges(fdt: libfdt.Fdt) -> set[tuple[int, int]]:
    raw = bytes(fdt.getprop(fdt.path_offset("/pcie@10000000"), "ranges"))
    words = struct.unpack(f">{len(raw) // 4}I", raw)
    out = set()
    for i in range(0, len(words), 7):  # 3 child + 2 parent + 2 size cells
        e = words[i : i + 7]
        out.add(((e[3] << 32) | e[4], (e[5] << 32) | e[6]))
    return out


@pytest.mark.parametrize(
    "text",
    [
        # the example: NUMA, 2 nodes, maxcpus > cpus
        (EXAMPLES / "qemu-virt.yaml").read_text(),
        "name: q2\nvcpus: 2\nvmm: qemu-virt\nmemory:\n  - {base: 0x40000000, size: 3G}\n",
    ],
)
def test_qemu_profile_agrees_with_real_qemu(text: str, tmp_path: Path) -> None:
    desc = _write(tmp_path, text)
    result = build.build(desc, tmp_path / "out")
    lay = result.layout
    name = lay.description.name
    dump = tmp_path / "qemu.dtb"
    qemu_dump(qemu_tcg_argv(tmp_path / "out" / f"{name}.qemu.args", dump), dump)
    fdt = libfdt.Fdt(dump.read_bytes())
    # memory nodes
    mems = []
    node = fdt.first_subnode(0)
    while node >= 0:
        if (
            fdt.getprop(node, "device_type", (libfdt.NOTFOUND,)) != -libfdt.NOTFOUND
            and bytes(fdt.getprop(node, "device_type")) == b"memory\0"
        ):
            numa = fdt.getprop(node, "numa-node-id", (libfdt.NOTFOUND,))
            nid = None if numa == -libfdt.NOTFOUND else numa.as_uint32()
            mems += [(b, s, nid) for b, s in _reg(fdt, fdt.get_path(node))]
        node = fdt.next_subnode(node, (libfdt.NOTFOUND,))
    expect = [(m.range.base, m.range.size, m.numa_node) for m in lay.memory_nodes]
    assert sorted(mems) == expect
    # devices at the profile's addresses
    mm = {e.name: (e.base, e.size) for e in profiles.memmap(qemu_virt.QEMU_VIRT, lay.description)}
    assert _reg(fdt, "/pl011@9000000") == [mm["uart0"]]
    assert _reg(fdt, "/pl031@9010000") == [mm["rtc"]]
    assert _reg(fdt, "/fw-cfg@9020000") == [mm["fw-cfg"]]
    assert _reg(fdt, "/intc@8000000") == [mm["gic-dist"], mm["gic-redist"]]
    assert _reg(fdt, "/pcie@10000000") == [mm["high-pcie-ecam"]]
    assert {mm["pcie-mmio"], mm["pcie-pio"], mm["high-pcie-mmio"]} == _pcie_ranges(fdt)
    # and nothing QEMU describes shares a granule with the region
    from pvdesc.emit import patch
    from pvdesc.read import dtb

    for path, r in patch.device_windows(dtb.parse(dump.read_bytes())):
        assert not r.overlaps(lay.region.granules()), path


def _ipas_from_json(out: Path, name: str) -> list[str]:
    hv = json.loads((out / f"{name}.hypervisor.json").read_text())
    return [f"{v['id']} {v['pvtime_ipa']:#x}" for v in hv["vcpus"]]


def test_generic_c_header_compiles_and_matches_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build.build(EXAMPLES / "numa-2node.yaml", out)
    prog = tmp_path / "main.c"
    prog.write_text(
        '#include <stdio.h>\n#include <inttypes.h>\n#include "numa-2node.h"\n'
        "int main(void) {\n"
        "  for (uint32_t i = 0; i < PVDESC_NUMA_2NODE_MAX_VCPUS; i++) {\n"
        "    if (pvdesc_numa_2node_pvtime_ipa(i) != pvdesc_numa_2node_pvtime_ipas[i]) return 1;\n"
        '    printf("%" PRIu32 " %#" PRIx64 "\\n", i, pvdesc_numa_2node_pvtime_ipa(i));\n'
        "  }\n"
        "  if (pvdesc_numa_2node_pvtime_ipa(PVDESC_NUMA_2NODE_MAX_VCPUS) != 0) return 2;\n"
        "  if (pvdesc_numa_2node_pvtime_ipa(0) == 0) return 4; /* 0 means out of range only */\n"
        "  return KVM_ARM_VCPU_PVTIME_CTRL == 2 && KVM_ARM_VCPU_PVTIME_IPA == 0 ? 0 : 3;\n"
        "}\n"
    )
    exe = tmp_path / "main"
    res = run(
        ["gcc", "-Wall", "-Werror", "-std=c11", "-I", str(out), "-o", str(exe), str(prog)],
        timeout=SLOW,
    )
    assert res.returncode == 0, res.stderr
    res = run([str(exe)])
    assert res.returncode == 0
    assert res.stdout.splitlines() == _ipas_from_json(out, "numa-2node")


def test_every_vmm_has_a_profile() -> None:
    assert set(vmms.PROFILES) == set(Vmm)
