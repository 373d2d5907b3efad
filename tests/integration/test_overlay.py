"""``NAME.dtso``/``NAME.dtbo``: the devicetree overlay, applied by dtc's ``fdtoverlay``.

For every QEMU-shaped example (RAM one contiguous range from 0x40000000, NUMA nodes
in address order) the base is QEMU's own ``dumpdtb`` for the description's memory
and vCPUs.  The overlay applied to it must decompile (``dtc -s``) exactly as
``build --into`` on the same base, and ``pvdesc check`` with the build's hypervisor
config must find it safe.  Where ``--into`` refuses the base (a QEMU device shares
the region's granule), ``check`` on the overlaid tree must say unsafe: an overlay
cannot see its base, so checking the result is the user's step.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import libfdt
import pytest
from helpers import EXAMPLES, cli_in_process, decompile, qemu_dump, qemu_tcg_argv, run

from pvdesc.core.units import parse_quantity
from pvdesc.emit import build, vmmconfig
from pvdesc.layout.allocate import Layout
from pvdesc.tools import proc

DTC_HINT = "apt-get install device-tree-compiler"
#: What dtc says about an overlay whose fragments cannot know their target's cells
#: (and the checks that then fail their prerequisite); nothing else is allowed.
OVERLAY_WARNINGS = {"reg_format", "ranges_format", "avoid_default_addr_size"}
ALL = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
RAM_BASE = 0x4000_0000
#: The largest single RAM bank a base dump asks QEMU for (it allocates it).
BASE_RAM_MAX = 16 << 30


def qemu_shaped(lay: Layout) -> bool:
    """RAM that QEMU virt's ``-m``/``-numa`` makes: contiguous from 1 GiB, nodes in order."""
    banks = sorted(lay.description.memory, key=lambda b: b.range.base)
    nodes = [b.numa_node or 0 for b in banks]
    contiguous = all(a.range.end == b.range.base for a, b in itertools.pairwise(banks))
    return banks[0].range.base == RAM_BASE and contiguous and nodes == sorted(nodes)


QEMU_SHAPED = [e for e in ALL if qemu_shaped(build.plan(EXAMPLES / e).layout)]


def _plan(tmp_path: Path, example: str) -> tuple[build.BuildResult, Path]:
    out = tmp_path / "out"
    return build.build(EXAMPLES / example, out), out


def _qemu_base(lay: Layout, tmp_path: Path) -> Path:
    """QEMU virt's own DTB for this layout's memory, NUMA nodes and vCPUs (TCG)."""
    argv = vmmconfig.qemu_args(lay)
    memory = argv.index("-m") + 1
    if not lay.description.numa and parse_quantity(argv[memory]) > BASE_RAM_MAX:
        # QEMU must allocate the bank, and this machine refuses 64 GiB in one piece; both
        # the overlay and --into replace the base's /memory, so its size does not matter.
        argv[memory] = vmmconfig.size_arg(BASE_RAM_MAX)
    args = tmp_path / "base.qemu.args"
    args.write_text(shlex.join(argv) + "\n")
    base = tmp_path / "base.dtb"
    argv = qemu_tcg_argv(args, base)
    argv[0] = proc.program("qemu-system-aarch64", "apt-get install qemu-system-arm")
    qemu_dump(argv, base)
    return base


def _apply(base: Path, overlay: Path, result: Path) -> None:
    res = run(
        [proc.program("fdtoverlay", DTC_HINT), "-i", str(base), "-o", str(result), str(overlay)]
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_the_qemu_shaped_examples_are_the_expected_ones() -> None:
    assert {"linux-carve-reserved.yaml", "qemu-virt.yaml", "uefi-carve-exclude.yaml"} <= set(
        QEMU_SHAPED
    )
    assert "kvmtool.yaml" not in QEMU_SHAPED and "ram-above-512g.yaml" not in QEMU_SHAPED


@pytest.mark.parametrize("example", ALL)
def test_dtso_compiles_to_the_dtbo_with_only_the_overlay_warnings(
    tmp_path: Path, example: str
) -> None:
    result, out = _plan(tmp_path, example)
    name = result.layout.description.name
    kinds = {o.name: o.kind for o in result.outputs}
    assert kinds[f"{name}.dtso"] == "dtso" and kinds[f"{name}.dtbo"] == "dtbo"
    again = tmp_path / "again.dtbo"
    res = run(
        [proc.program("dtc", DTC_HINT), "-I", "dts", "-O", "dtb", "-o", str(again),
         str(out / f"{name}.dtso")]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert again.read_bytes() == (out / f"{name}.dtbo").read_bytes()
    said = set(re.findall(r"Warning \(([a-z0-9_]+)\)", res.stderr))
    assert said <= OVERLAY_WARNINGS | {"pci_device_reg", "pci_device_bus_num", "simple_bus_reg",
                                       "i2c_bus_reg", "spi_bus_reg", "avoid_unnecessary_addr_size",
                                       "unique_unit_address"}, res.stderr  # fmt: skip
    for line in res.stderr.splitlines():  # those last ones only as "Failed prerequisite"
        kind = re.search(r"Warning \(([a-z0-9_]+)\)", line)
        assert kind is not None and (kind[1] in OVERLAY_WARNINGS or "prerequisite" in line), line
    blob = (out / f"{name}.dtbo").read_bytes()
    fdt = libfdt.Fdt(blob)
    fragments = [
        f"/fragment@{i}"
        for i in range(2)
        if fdt.path_offset(f"/fragment@{i}", (libfdt.NOTFOUND,)) >= 0
    ]
    assert len(fragments) == (2 if result.layout.reserved else 1)
    for frag in fragments:
        node = fdt.path_offset(frag)
        assert fdt.getprop(node, "target-path").as_str() == "/"
        assert fdt.path_offset(f"{frag}/__overlay__") >= 0


@pytest.mark.parametrize("example", QEMU_SHAPED)
def test_overlay_on_qemus_tree_equals_into_and_checks_safe(
    tmp_path: Path, example: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result, out = _plan(tmp_path, example)
    name = result.layout.description.name
    base = _qemu_base(result.layout, tmp_path)
    overlaid = tmp_path / "overlaid.dtb"
    _apply(base, out / f"{name}.dtbo", overlaid)
    config = str(out / f"{name}.hypervisor.json")
    boot = str(result.layout.description.boot)
    code, _, err = cli_in_process(
        ["build", "-q", str(EXAMPLES / example), "-o", str(tmp_path / "into"), "--into", str(base)],
        capsys,
    )
    check = ["check", "--dtb", str(overlaid), "--hypervisor-config", config, "--boot", boot]
    verdict, report, _ = cli_in_process(check, capsys)
    if code == 0:
        assert decompile(overlaid) == decompile(tmp_path / "into" / f"{name}.dtb")
        assert verdict == 0 and report.endswith("verdict: safe\n"), report
    else:  # --into saw a QEMU device in the region's granules; check on the overlay does too
        assert "base DTB node" in err, err
        assert verdict == 1 and "region-overlaps-device" in report, report


def test_a_base_memory_node_named_otherwise_needs_into(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's rule: an overlay cannot delete QEMU's node if its name is not pvdesc's."""
    result, out = _plan(tmp_path, "uefi-carve-exclude.yaml")
    base = _qemu_base(result.layout, tmp_path)
    fdt = libfdt.Fdt(base.read_bytes())
    fdt.set_name(fdt.path_offset("/memory@40000000"), "memory")
    renamed = tmp_path / "renamed.dtb"
    renamed.write_bytes(bytes(fdt.as_bytearray()))
    overlaid = tmp_path / "overlaid.dtb"
    _apply(renamed, out / "uefi-carve-exclude.dtbo", overlaid)
    config = str(out / "uefi-carve-exclude.hypervisor.json")
    check = ["check", "--dtb", str(overlaid), "--hypervisor-config", config, "--boot", "uefi-dt"]
    verdict, report, _ = cli_in_process(check, capsys)
    assert verdict == 1 and "ipa-in-ram: " in report and "/memory " in report, report
    code, _, err = cli_in_process(
        ["build", "-q", str(EXAMPLES / "uefi-carve-exclude.yaml"), "-o", str(tmp_path / "into"),
         "--into", str(renamed)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    check[2] = str(tmp_path / "into" / "uefi-carve-exclude.dtb")
    verdict, report, _ = cli_in_process(check, capsys)
    assert verdict == 0, report
