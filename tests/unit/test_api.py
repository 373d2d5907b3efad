"""``pvdesc.api``: the documented in-process API gives the command's bytes and answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import EXAMPLES, ROOT, cli_in_process, cli_subprocess, run

from pvdesc import api

CARVE = EXAMPLES / "linux-carve-reserved.yaml"


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_build_gives_the_commands_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli_in_process(["build", "-q", str(CARVE), "-o", str(tmp_path / "cli")], capsys)
    assert code == 0, err
    result = api.build(CARVE)
    assert result.name == "linux-carve-reserved"
    assert dict(result.outputs) == _files(tmp_path / "cli")
    assert list(result.outputs)[-1] == "linux-carve-reserved.manifest.json"
    assert result.output("dtbo") == (tmp_path / "cli" / "linux-carve-reserved.dtbo").read_bytes()
    result.write(tmp_path / "api")
    assert _files(tmp_path / "api") == _files(tmp_path / "cli")


def test_build_text_equals_build_of_the_file() -> None:
    from_text = api.build_text(CARVE.read_text(), name=CARVE.name)
    from_file = api.build(CARVE)
    for suffix in ("dts", "dtb", "dtso", "dtbo", "hypervisor.json", "h", "rs"):
        assert from_text.output(suffix) == from_file.output(suffix), suffix
    assert api.build_text(CARVE.read_bytes()).output("dtb") == from_file.output("dtb")


def test_errors_are_the_commands_one_line() -> None:
    text = CARVE.read_text().replace("vcpus: 2", "vcpus: 0", 1)
    assert text != CARVE.read_text()
    with pytest.raises(api.PvdescError) as caught:
        api.build_text(text, name="vm.yaml")
    line = next(n for n, s in enumerate(text.splitlines(), 1) if s.startswith("vcpus:"))
    assert str(caught.value).startswith(f"vm.yaml:{line}:")
    with pytest.raises(
        api.PvdescError, match=r"has no output linux-carve-reserved\.nope; it has: dts"
    ):
        api.build(CARVE).output("nope")
    with pytest.raises(api.PvdescError, match=r"^<dtb>: "):
        api.check(b"\xd0\x0d\xfe\xed" + bytes(60), api.build(CARVE).output("hypervisor.json"))
    with pytest.raises(api.PvdescError, match="boot 'uefi' is not"):
        api.check(b"", b"", boot="uefi")


def test_hypervisor_config_reader(tmp_path: Path) -> None:
    result = api.build(CARVE)
    raw = result.output("hypervisor.json")
    data = json.loads(raw)
    config = api.read_hypervisor_config(raw)
    assert config.pvtime_ipas == tuple(v["pvtime_ipa"] for v in data["vcpus"])
    assert config.region_base == data["stolen_time"]["base"]
    assert config.region_size == data["stolen_time"]["size"]
    assert config.ipa_bits == data["ipa_bits"]
    assert [(m.slot, m.guest_phys_addr, m.memory_size, m.purpose) for m in config.memslots] == [
        (s["slot"], s["guest_phys_addr"], s["memory_size"], s["purpose"]) for s in data["memslots"]
    ]
    path = tmp_path / "c.json"
    path.write_bytes(raw)
    from_path = api.read_hypervisor_config(path)
    assert from_path.pvtime_ipas == config.pvtime_ipas and from_path.source == str(path)
    assert result.hypervisor_config.pvtime_ipas == config.pvtime_ipas
    with pytest.raises(api.PvdescError, match=r'"format" is not "pvdesc\.hypervisor/1"'):
        api.read_hypervisor_config(b'{"format": "other"}')


def test_check_on_bytes_is_the_commands_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = api.build(CARVE)
    result.write(tmp_path)
    dtb = result.output("dtb")
    config_path = tmp_path / "linux-carve-reserved.hypervisor.json"
    code, text, _ = cli_in_process(
        ["check", "--dtb", str(tmp_path / "linux-carve-reserved.dtb"), "--hypervisor-config",
         str(config_path), "--format", "json"],
        capsys,
    )  # fmt: skip
    assert code == 0
    report = api.check(dtb, config_path.read_bytes())
    assert report.safe
    assert report.to_json() == text.replace(str(config_path), "<hypervisor config>")
    assert report.to_text().endswith("verdict: safe\n")
    # the reader's result checks the same
    same = api.check(dtb, api.read_hypervisor_config(config_path))
    assert [f.code for f in same.findings] == [f.code for f in report.findings]
    # and an unsafe pair is unsafe: the carve's no-map dropped under UEFI
    uefi = api.check(dtb, result.hypervisor_config, boot="uefi-dt")
    assert not uefi.safe and "no-map-under-uefi" in {f.code for f in uefi.findings}


def test_into_takes_bytes_or_a_path(tmp_path: Path) -> None:
    base = api.build(EXAMPLES / "uefi-carve-exclude.yaml").output("dtb")
    path = tmp_path / "base.dtb"
    path.write_bytes(base)
    by_bytes = api.build(CARVE, into=base).output("dtb")
    assert by_bytes == api.build(CARVE, into=path).output("dtb")
    assert by_bytes == api.build_text(CARVE.read_text(), into=base).output("dtb")
    assert by_bytes != api.build(CARVE).output("dtb")  # it is the base, patched
    with pytest.raises(api.PvdescError, match=r"^base DTB: not a valid DTB"):
        api.build(CARVE, into=b"garbage" * 20)


def test_python_m_pvdesc_is_the_command(tmp_path: Path) -> None:
    res = cli_subprocess("--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout == f"pvdesc {api.__version__}\n"
    res = cli_subprocess("build", str(CARVE), "--only", "h", "-o", "-")
    assert res.returncode == 0 and res.stdout.encode() == api.build(CARVE).output("h")


def test_import_pvdesc_stays_light() -> None:
    """``pvdesc --version`` imports no template, YAML, schema or libfdt machinery."""
    probe = (
        "import sys, pvdesc, pvdesc.commands.cli\n"
        "heavy = {'yaml', 'jinja2', 'jsonschema', 'fastjsonschema', 'libfdt', 'fdt',\n"
        "         'pvdesc.api', 'pvdesc.emit.build'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    res = run([sys.executable, "-c", probe], cwd=ROOT)
    assert res.returncode == 0 and res.stdout == "[]\n", res.stdout + res.stderr
