"""pvdesc prove --kvm: real KVM, inside an emulated arm64 host with EL2, answers PV_TIME_ST.

The emulated host boots ONCE for this module (:func:`pvdesc.commands.prove.kvm.prove_many`) and runs
pvdesc's VMM for every shipped example, the negative controls and a tampered header, one
after the other.  Each test reads KVM's answers as the VMM printed them (the raw
``pvdesc-vmm:`` lines as well as the parsed ones), not only the verdict, so a wrong judge
cannot pass them.  The CLI and a host without EL2 each take one more boot.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import EXAMPLES, ROOT, cli_subprocess

from pvdesc import kvm
from pvdesc.commands.prove import guest, kvm_host, kvm_job, kvm_judge, kvm_vmm
from pvdesc.commands.prove import kvm as kvmprove
from pvdesc.core.model import Describe
from pvdesc.core.ranges import Range
from pvdesc.description.load import LoadedDescription, load
from pvdesc.errors import LayoutError
from pvdesc.layout import allocate as layout
from pvdesc.layout.allocate import Layout, MemoryNode

pytestmark = pytest.mark.boot

#: Generous: the machine may be shared.  Nothing here asserts on time.
TIMEOUT = 600.0
SHIPPED = sorted(EXAMPLES.glob("*.yaml"))
INSIDE_RAM = ROOT / "tests" / "data" / "prove" / "linux-carve-exclude.yaml"
#: vCPU whose PVTIME_IPA negative control 2 leaves unset.
UNSET = 1


def region_in_ram(path: Path = INSIDE_RAM) -> tuple[LoadedDescription, Layout]:
    """Negative control: the region at the top of RAM with describe none, so /memory covers it.

    ``pvdesc build`` refuses this; the layout is the safe carve/exclude one with its /memory
    put back over the region (one RAM memslot backs both, as a real VMM's would).
    """
    loaded = load(path)
    safe = layout.allocate(loaded.description)
    bank = loaded.description.memory[0]
    bad = safe._replace(
        describe=Describe.NONE,
        memory_nodes=(MemoryNode.of(bank.range, bank),),
        reserved=(),
    )
    with pytest.raises(LayoutError, match="ipa-in-ram"):
        layout.verify(bad)  # the library's own check knows it is unsafe
    return loaded, bad


def tampered_header_job() -> kvm_job.Job:
    """single-vcpu's build, with a VMM compiled against a header whose vCPU 0 IPA is moved."""
    loaded = load(EXAMPLES / "single-vcpu.yaml")
    job = kvm_job.make_job(loaded, layout.allocate(loaded.description))
    header = job.output(".h")
    ipa = job.layout.vcpu_ipas[0]
    head, table, tail = header.data.decode().partition("_pvtime_ipas[")
    assert f"UINT64_C({ipa:#x})," in tail
    text = head + table + tail.replace(f"UINT64_C({ipa:#x}),", f"UINT64_C({ipa + 64:#x}),", 1)
    bad = kvm_vmm.Header(header.name, text.encode(), "single-vcpu")
    return job._replace(vmm=kvm_vmm.vmm_binary(bad))


@pytest.fixture(scope="module")
def reports() -> dict[str, kvm_judge.KvmReport]:
    """Every scenario, proven in one emulated host boot."""
    items: list[tuple[LoadedDescription, Layout] | kvm_job.Job] = []
    names = []
    for path in SHIPPED:
        loaded = load(path)
        items.append((loaded, layout.allocate(loaded.description)))
        names.append(path.stem)
    items.append(kvm_job.make_job(*region_in_ram()))
    names.append("nc-inside-ram")
    loaded = load(EXAMPLES / "qemu-virt-8cpu.yaml")
    items.append(kvm_job.make_job(loaded, layout.allocate(loaded.description), unset=[UNSET]))
    names.append("nc-unset")
    items.append(tampered_header_job())
    names.append("tampered-header")
    done = kvmprove.prove_many(items, guest.guest_parts(), TIMEOUT)
    return dict(zip(names, done, strict=True))


def raw_answers(rep: kvm_judge.KvmReport) -> dict[int, dict[str, int]]:
    """The VMM's ``vcpu N ...`` lines, read here independently of kvm_judge.parse_answers."""
    out = {}
    for line in rep.vmm_lines:
        if line.startswith("vcpu "):
            kv = {k: int(v, 0) for k, v in re.findall(r"(\w+) (0x[0-9a-f]+|\d+)", line)}
            out[kv["vcpu"]] = kv
    return out


# --- every shipped example ------------------------------------------------------------------


@pytest.mark.parametrize("name", [p.stem for p in SHIPPED])
def test_kvm_reports_every_configured_ipa(
    reports: dict[str, kvm_judge.KvmReport], name: str
) -> None:
    rep = reports[name]
    assert rep.no_result is None, rep.no_result
    lay = rep.layout
    assert "VHE mode initialized successfully" in rep.host.kvm_line
    raw = raw_answers(rep)
    hyp = rep.job.hypervisor
    # Every possible vCPU answered, with exactly the config's IPA (= base + 64 * id).
    assert sorted(raw) == list(range(lay.description.max_vcpus))
    for v in hyp["vcpus"]:
        got = raw[v["id"]]
        assert got["ipa"] == v["pvtime_ipa"] == lay.vcpu_ipas[v["id"]]
        assert got["pv_time_st"] == v["pvtime_ipa"]
        assert got["smccc_version"] >= 0x10001
        assert got["arch_features"] == 0 and got["pv_features"] == 0
        # KVM wrote the structure at the reported IPA over the VMM's 0xa5 poison.
        assert got["revision"] == 0 and got["attributes"] == 0
    # The VMM made exactly the config's memslots.
    assert f"memslots {len(hyp['memslots'])} vcpus {len(hyp['vcpus'])}" in "\n".join(rep.vmm_lines)
    if lay.description.vmm == "generic-kvm":
        assert rep.job.header == f"{name}.h"
        assert f"header {name}.h agrees with the config" in rep.vmm_lines[0]
    else:
        assert rep.job.header is None
    assert rep.passed, rep.failures
    assert all(f.severity != "error" for f in rep.findings)
    text = kvmprove.to_text(rep)
    assert text.endswith("verdict: PASS: KVM reported every configured IPA, and none lies in "
                         "RAM the guest is told it may use\n")  # fmt: skip


def test_512_vcpus_all_answer(reports: dict[str, kvm_judge.KvmReport]) -> None:
    rep = reports["max-vcpus-512"]
    raw = raw_answers(rep)
    assert len(raw) == kvm.KVM_MAX_VCPUS == 512
    ipas = [raw[i]["pv_time_st"] for i in range(512)]
    assert len(set(ipas)) == 512
    region = rep.layout.region
    assert all(region.contains(Range(a, 64)) for a in ipas)
    assert [a.reported_ipa for a in rep.vcpus] == list(rep.layout.vcpu_ipas)


# --- negative controls ----------------------------------------------------------------------


def test_ipa_inside_usable_ram_fails_naming_vcpus_and_memory_node(
    reports: dict[str, kvm_judge.KvmReport],
) -> None:
    rep = reports["nc-inside-ram"]
    lay = rep.layout
    raw = raw_answers(rep)
    # KVM accepted the IPAs and answered with them: it does not know what the guest calls RAM.
    assert [raw[i]["pv_time_st"] for i in sorted(raw)] == list(lay.vcpu_ipas)
    assert all(r["pv_features"] == 0 and r["revision"] == 0 for r in raw.values())
    assert not rep.passed
    (f,) = [f for f in rep.findings if f.code == "ipa-in-ram"]
    last = lay.description.max_vcpus - 1
    assert f.message.startswith(f"vCPUs 0-{last}: the structure lies in RAM the guest may allocate")
    assert f.source == "/memory@40000000 reg[0]"
    doc = json.loads(kvmprove.to_json(rep))
    assert doc["verdict"] == doc["kvm"]["verdict"] == "fail"
    assert any("ipa-in-ram" in x and "vCPUs 0-" in x for x in doc["failures"])


def test_unset_ipa_answers_not_supported_and_fails(
    reports: dict[str, kvm_judge.KvmReport],
) -> None:
    rep = reports["nc-unset"]
    raw = raw_answers(rep)
    assert raw[UNSET]["pv_features"] == (1 << 64) - 1  # SMCCC NOT_SUPPORTED (-1)
    assert raw[UNSET]["pv_time_st"] == (1 << 64) - 1
    assert all(r["pv_features"] == 0 for i, r in raw.items() if i != UNSET)
    answer = rep.vcpus[UNSET]
    assert answer.features == -1 and answer.reported_ipa is None
    assert not rep.passed
    assert [f.code for f in rep.findings if f.severity == "error"] == ["pv-time-not-supported"]
    assert rep.findings[0].message.startswith(f"vCPU {UNSET}: PV_TIME_FEATURES(PV_TIME_ST)")
    assert rep.job.header is None  # the header would have set it


def test_header_that_disagrees_with_the_config_is_refused(
    reports: dict[str, kvm_judge.KvmReport],
) -> None:
    rep = reports["tampered-header"]
    assert not rep.passed and rep.vcpus == ()
    (f,) = rep.findings
    assert f.code == "vmm-refused"
    assert "header single-vcpu.h: vCPU 0 IPA 0x10040, config 0x10000" in f.message


# --- the command line, and a host without KVM -----------------------------------------------


def test_cli_json() -> None:
    res = cli_subprocess(
        "prove", "--kvm", str(EXAMPLES / "kvmtool.yaml"), "--format", "json",
        "--timeout", str(TIMEOUT), timeout=TIMEOUT + 60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["format"] == "pvdesc.prove/1" and doc["verdict"] == "pass"
    k = doc["kvm"]
    assert k["verdict"] == "pass" and k["findings"] == [
        f for f in k["findings"] if f["severity"] == "info"
    ]
    assert "VHE mode initialized successfully" in k["host"]["kvm_line"]
    assert k["host"]["kernel"].startswith("6.")
    base = doc["region"][0]
    assert [(v["id"], v["configured_ipa"], v["reported_ipa"]) for v in k["vcpus"]] == [
        (i, base + 64 * i, base + 64 * i) for i in range(4)
    ]
    assert {(v["features"], v["revision"], v["attributes"]) for v in k["vcpus"]} == {(0, 0, 0)}
    # The second stage: kvmtool's layout booted as a Linux guest by pvdesc's VMM under KVM.
    g = k["guest"]
    assert g["verdict"] == "pass", g["failures"]
    assert g["stolen_time_line"].endswith("arm-pv: using stolen time PV")
    assert "80000000-bfffffff : System RAM" in g["iomem"]
    assert not [ln for ln in g["iomem"] if ln.startswith("0102")]  # nothing at the region
    assert [s["cpu"] for s in g["steal"]] == [0, 1, 2, 3]
    assert all(s["kvm_stolen_ns"] > 0 for s in g["steal"])


def test_host_without_kvm_is_no_result() -> None:
    loaded = load(EXAMPLES / "single-vcpu.yaml")
    no_el2 = kvm_host.host_machine()._replace(machine="virt,gic-version=3")
    (rep,) = kvmprove.prove_many(
        [(loaded, layout.allocate(loaded.description))], guest.guest_parts(), TIMEOUT, no_el2
    )
    assert rep.no_result is not None and not rep.passed
    assert "/dev/kvm" in rep.no_result
    assert "kvm [1]: HYP mode not available" in rep.no_result  # the host's own line
