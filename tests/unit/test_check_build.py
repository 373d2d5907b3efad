"""Everything ``pvdesc build`` emits passes ``pvdesc check`` (property test)."""

from __future__ import annotations

import json

import yaml
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from pvdesc.audit import check
from pvdesc.core.findings import Severity
from pvdesc.core.model import Boot
from pvdesc.description import load as description
from pvdesc.emit import build, hypervisor
from pvdesc.emit.build import Output
from pvdesc.errors import LayoutError
from pvdesc.layout import allocate as layout
from pvdesc.read import dtb

G64K = 0x10000


@st.composite
def descriptions(draw: st.DrawFn) -> bytes:
    vcpus = draw(st.integers(1, 64))
    max_vcpus = draw(st.integers(vcpus, 512))
    numa = draw(st.booleans())
    banks = []
    addr = 0x40000000
    for i in range(draw(st.integers(1, 3))):
        addr += draw(st.integers(0, 64)) * G64K
        size = draw(st.integers(2, 0x4000)) * G64K
        bank: dict[str, str | int] = {"base": hex(addr), "size": hex(size)}
        if numa:
            bank["numa_node"] = i
        banks.append(bank)
        addr += size
    devices = []
    dev = 0x1000
    for i in range(draw(st.integers(0, 3))):
        dev += draw(st.integers(0, 0x100000))
        size = draw(st.integers(1, 0x40000))
        devices.append({"name": f"d{i}", "base": hex(dev), "size": hex(size)})
        dev += size
    placement = draw(st.sampled_from(["hole", "carve", "fixed"]))
    stolen: dict[str, object] = {"placement": placement}
    if placement == "fixed":
        stolen["base"] = hex(draw(st.sampled_from([0x090A0000, 0x20000000, addr + G64K])))
    stolen["describe"] = draw(
        st.sampled_from(["auto", "auto", "auto", "exclude", "reserved-memory", "none"])
    )
    doc = {
        "name": "prop",
        "vcpus": vcpus,
        "max_vcpus": max_vcpus,
        "ipa_bits": draw(st.integers(36, 48)),
        "boot": draw(st.sampled_from(["linux-dt", "uefi-dt", "uefi-acpi"])),
        "memory": banks,
        "devices": devices,
        "stolen_time": stolen,
    }
    return yaml.safe_dump(doc).encode()


def _by_kind(outputs: tuple[Output, ...], kind: str) -> Output:
    return next(o for o in outputs if o.kind == kind)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(descriptions())
def test_build_output_passes_check(text: bytes) -> None:
    loaded = description.loads(text, "prop.yaml")
    try:
        lay = layout.allocate(loaded.description)
    except LayoutError:
        reject()
    outputs = build.render_outputs(loaded, lay)
    tree = dtb.parse(_by_kind(outputs, "dtb").data, "prop.dtb")
    cfg = _by_kind(outputs, "hypervisor-config")
    target = hypervisor.target_from_config(cfg.data, "prop.hypervisor.json")
    boot = Boot(loaded.description.boot)
    findings = check.check(tree, target, boot)
    errors = [f for f in findings if f.severity is Severity.ERROR]
    assert not errors, (text.decode(), findings)
    assert check.verdict(findings) == "safe"
    # pvdesc never shares a 64 KiB granule with RAM (model.check_consistent, layout.verify).
    assert not [f for f in findings if f.code == "granule-shared-with-ram"]
    slot_info = {"dedicated-memslot", "region-in-ram-memslot"} & {f.code for f in findings}
    assert len(slot_info) == 1
    assert json.loads(cfg.data)["stolen_time"]["base"] == target.region.base
