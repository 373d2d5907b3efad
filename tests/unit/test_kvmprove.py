"""prove --kvm without booting: the VMM config, the probe's addresses, the judge, the VMM build.

The judge is fed VMM output lines written here (the real ones come from
tests/integration/test_prove_kvm.py),
so each rule is shown to fire on exactly the answer it is about.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from helpers import EXAMPLES, cli_in_process

from pvdesc.commands.prove import kvm as kvmprove
from pvdesc.commands.prove import kvm_guest as kvmguest
from pvdesc.commands.prove import kvm_guest_plan, kvm_host, kvm_job, kvm_judge, kvm_vmm
from pvdesc.core.ranges import Labelled, Range
from pvdesc.description.load import load
from pvdesc.errors import ToolError
from pvdesc.layout import allocate as layout
from pvdesc.read import guest_output
from pvdesc.tools import proc

HOST = kvm_host.HostInfo("6.1.0", "kvm [1]: VHE mode initialized successfully", (), 1.0)
MINUS_ONE = (1 << 64) - 1


def job(name: str = "kvmtool", unset: tuple[int, ...] = ()) -> kvm_job.Job:
    loaded = load(EXAMPLES / f"{name}.yaml")
    return kvm_job.make_job(loaded, layout.allocate(loaded.description), unset)


def line(vid: int, ipa: int, st: int, features: int = 0, revision: int = 0) -> str:
    return (
        f"vcpu {vid} ipa {ipa:#x} smccc_version 0x10001 arch_features 0 pv_features {features:#x} "
        f"pv_time_st {st:#x} revision {revision:#x} attributes 0 stolen_time 0"
    )


def answers(j: kvm_job.Job, **change: int) -> kvm_host.JobOutput:
    """A probe run in which every vCPU reports its configured IPA, except ``vN=ipa`` changes."""
    lines = ["kvm api 12 steal_time 1 ipa_size 48 max_vcpus 512"]
    for vid, ipa in enumerate(j.layout.vcpu_ipas):
        st = change.get(f"v{vid}", ipa)
        lines.append(line(vid, ipa, st, 0 if st != MINUS_ONE else MINUS_ONE))
    return kvm_host.JobOutput((*lines, f"done {len(j.layout.vcpu_ipas)}"), (), 0)


def test_config_is_the_hypervisor_json() -> None:
    j = job("qemu-virt-8cpu")
    text = j.config.splitlines()
    hyp = j.hypervisor
    assert text[1] == f"ipa_bits {hyp['ipa_bits']}"
    assert [t for t in text if t.startswith("memslot ")] == [
        f"memslot {s['slot']} {s['guest_phys_addr']:#x} {s['memory_size']:#x} {s['purpose']}"
        for s in hyp["memslots"]
    ]
    assert f"vcpus {len(hyp['vcpus'])}" in text
    assert [t for t in text if t.startswith("ipa ")] == [
        f"ipa {v['id']} {v['pvtime_ipa']:#x}" for v in hyp["vcpus"]
    ]
    # The payload sits at the start of RAM, the report window in no memslot.
    assert "payload 0x40000000" in text and "report 0x0" in text
    assert j.header == "qemu-virt-8cpu.h"
    unset = job("qemu-virt-8cpu", (3,))
    assert "ipa 3 " not in unset.config and "ipa 4 " in unset.config
    assert unset.header is None


def test_probe_addresses_avoid_the_region_and_the_memslots() -> None:
    ram = (Range(0x0, 0x20000), "ram")
    region = Range(0x0, 0x10000)
    assert kvm_job.payload_page([ram], region) == 0x10000
    slots = [ram, (Range(0x30000, 0x1000), "stolen-time")]
    assert kvm_job.report_window(slots, 40) == 0x20000
    assert kvm_job.report_window([(Range(0x10000, 0x1000), "ram")], 40) == 0


def test_judge_passes_what_kvm_reported_as_configured() -> None:
    j = job()
    rep = kvm_judge.judge(j, HOST, answers(j))
    assert rep.passed, rep.failures
    assert [a.reported_ipa for a in rep.vcpus] == list(j.layout.vcpu_ipas)


def test_judge_fails_a_reported_ipa_other_than_the_config() -> None:
    j = job()
    ipa = j.layout.vcpu_ipas[2]
    rep = kvm_judge.judge(j, HOST, answers(j, v2=ipa + 64))
    assert not rep.passed
    assert [f.code for f in rep.findings if f.severity == "error"] == ["ipa-mismatch"]
    assert rep.failures[0].startswith("ipa-mismatch: vCPU 2: PV_TIME_ST reported")


def test_judge_runs_check_on_the_reported_address() -> None:
    j = job()
    rep = kvm_judge.judge(j, HOST, answers(j, v0=0x80000000))  # inside kvmtool's RAM
    codes = {f.code for f in rep.findings if f.severity == "error"}
    assert {"ipa-mismatch", "ipa-in-ram", "ipa-outside-region"} <= codes
    (ram,) = [f for f in rep.findings if f.code == "ipa-in-ram"]
    assert ram.message.startswith("vCPU 0:") and ram.source.startswith("/memory@80000000")


def test_judge_fails_an_unwritten_structure_and_not_supported() -> None:
    j = job()
    out = answers(j, v1=MINUS_ONE)
    lines = [ln.replace("revision 0x0", "revision 0xa5a5a5a5") if ln.startswith("vcpu 3 ")
             else ln for ln in out.lines]  # fmt: skip
    rep = kvm_judge.judge(j, HOST, kvm_host.JobOutput(tuple(lines), (), 0))
    codes = [f.code for f in rep.findings if f.severity == "error"]
    assert sorted(codes) == ["pv-time-not-supported", "structure-not-written"]


def test_no_kvm_and_no_answer_are_no_result() -> None:
    j = job()
    out = kvm_host.JobOutput(("no-kvm: /dev/kvm: No such file or directory",), (), 3)
    rep = kvm_judge.judge(j, HOST, out)
    assert rep.no_result is not None and "kvm [1]: VHE" in rep.no_result and not rep.passed
    rep = kvm_judge.judge(j, HOST, kvm_host.JobOutput((), (), None))
    assert rep.no_result is not None and not rep.passed
    rep = kvm_judge.judge(j, HOST, kvm_host.JobOutput((), ("Segmentation fault",), 139))
    assert rep.no_result is not None and "Segmentation fault" in rep.no_result


def test_vmm_refusal_is_a_failure() -> None:
    j = job()
    out = kvm_host.JobOutput(("error: KVM_SET_DEVICE_ATTR(PVTIME_IPA 0x1) vCPU 0: Invalid",), (), 1)
    rep = kvm_judge.judge(j, HOST, out)
    assert not rep.passed and rep.no_result is None
    assert rep.findings[0].code == "vmm-refused"


def test_vmm_build_is_cached_and_a_bad_header_is_one_error() -> None:
    first = kvm_vmm.vmm_binary()
    assert first.is_file() and kvm_vmm.vmm_cache_dir() in first.parents
    assert kvm_vmm.vmm_binary() == first
    bad = kvm_vmm.Header("broken.h", b"#error this header is broken\n", "broken")
    with pytest.raises(ToolError, match="this header is broken"):
        kvm_vmm.vmm_binary(bad)


def test_help_names_kvm(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_in_process(["prove", "--help"], capsys)
    out = capsys.readouterr().out
    assert "--kvm" in out and "PV_TIME_ST" in out


def test_payload_words_are_the_assembly_beside_them(tmp_path: Path) -> None:
    """The VMM's payload and trap are encoded by hand; the assembler must agree with each word."""
    source = kvm_vmm.VMM_SOURCE.read_text()
    gas = proc.program("aarch64-linux-gnu-as", kvm_vmm.CROSS_INSTALL)
    objcopy = proc.program("aarch64-linux-gnu-objcopy", kvm_vmm.CROSS_INSTALL)
    for name in ("payload", "trap"):
        body = source.split(f"static const uint32_t {name}[] = {{", 1)[1].split("};", 1)[0]
        rows = re.findall(r"0x([0-9a-f]{8}), /\* (.*?) \*/", body)
        assert len(rows) == len(re.findall(r"^\s+0x", body, re.M)), name
        asm, obj, raw = (tmp_path / f"{name}.{ext}" for ext in ("s", "o", "bin"))
        asm.write_text("".join(f"{text}\n" for _, text in rows))
        res = proc.run([gas, "-o", str(obj), str(asm)], timeout=60)
        assert res.returncode == 0, res.stderr
        res = proc.run([objcopy, "-O", "binary", "-j", ".text", str(obj), str(raw)], timeout=60)
        assert res.returncode == 0, res.stderr
        words = struct.unpack(f"<{len(rows)}I", raw.read_bytes())
        assert [f"{w:08x}" for w in words] == [word for word, _ in rows], name


def _guest_plan() -> tuple[layout.Layout, kvm_guest_plan.Plan]:
    lay = layout.allocate(load(EXAMPLES / "linux-carve-reserved.yaml").description)
    plan = kvm_guest_plan.Plan(
        2, 0x40000000, 0x42000000, Range(0x42200000, 0x1000), b"dtb", b"", Path()
    )
    return lay, plan


def test_guest_crash_is_a_fail_quoting_it() -> None:
    lay, plan = _guest_plan()
    console = [
        "guest: [    0.060000] arm-pv: using stolen time PV",
        "guest: [    2.100000] Unable to handle kernel paging request at virtual address ffff0",
        "guest: [    2.100100] pc : xxh64+0x68/0x2a0",
        "guest: [    2.300000] Kernel panic - not syncing: Attempted to kill init!",
    ]
    rep = kvmguest.judge(lay, plan, ["guest system-event reset"], console, True)
    assert rep.verdict == "fail"
    assert rep.crash == tuple(c[len("guest: ") :] for c in console[1:])
    assert rep.failures[0].startswith("crash: the guest kernel crashed ([    2.100000] Unable")


CRASH = [
    "guest: [    0.097578] arm-pv: using stolen time PV",
    "guest: [   17.523867] Unable to handle kernel execute from non-executable memory at virtual",
    "guest: [    6.331150] Kernel panic - not syncing: Attempted to kill the idle task!",
]


def test_a_crash_the_layout_does_not_explain_says_so() -> None:
    """The region outside the guest's RAM: the crash fails the guest but is not blamed on it."""
    lay, plan = _guest_plan()
    rep = kvmguest.judge(lay, plan, ["guest system-event reset"], CRASH, True)
    assert rep.verdict == "fail" and rep.unexplained
    assert rep.failures[0].endswith(
        "the region lies outside the RAM the guest was told it may use, so the layout does not "
        "explain it"
    )
    # Stage 1 failed, or the region in RAM (the negative control): the crash is explained.
    assert not kvmguest.judge(lay, plan, ["guest system-event reset"], CRASH, False).unexplained
    inside = lay._replace(reserved=())  # its /memory node covers the region; nothing carves it
    assert any(r.overlaps(lay.region) for r in inside.usable_ram)
    rep = kvmguest.judge(inside, plan, ["guest system-event reset"], CRASH, True)
    assert rep.verdict == "fail" and not rep.unexplained
    assert rep.failures[0].endswith(
        "the region lies in RAM the guest was told it may use, where KVM's stolen-time writes land"
    )


def test_an_unexplained_crash_is_booted_again_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _, plan = _guest_plan()
    j = job("linux-carve-reserved")._replace(guest=plan)
    crashed = kvm_host.JobOutput(("guest system-event reset",), tuple(CRASH), 0)
    hung = kvm_host.JobOutput(("error: KVM_RUN vCPU 1: Bad address",), (), 1)
    runs: list[list[kvm_job.Job]] = []
    second: list[kvm_host.JobOutput] = [hung]

    def run_host(jobs: list[kvm_job.Job], *_: object) -> object:
        runs.append(jobs)
        linux = crashed if len(runs) == 1 else second[0]
        return HOST, tuple((answers(x), linux) for x in jobs)

    monkeypatch.setattr(kvmprove, "run_host", run_host)
    (rep,) = kvmprove.prove_many([j], None, 10.0)  # type: ignore[arg-type]
    assert runs == [[j], [j]]
    # The second boot's report stands; the first's failures are kept beside it.
    assert rep.guest is not None and rep.guest.failures[0].startswith("finished: ")
    assert rep.guest.earlier[0].startswith("crash: the guest kernel crashed ([   17.523867]")
    assert kvmguest.to_json(rep.guest)["earlier_boot_failures"] == list(rep.guest.earlier)
    text = kvmprove.to_text(rep)
    assert f"so the guest was booted again; it showed: {rep.guest.earlier[0]}" in text
    assert not rep.passed
    # Only once: the second boot's own unexplained hang is not booted a third time.
    assert rep.guest.unexplained and len(runs) == 2
    # A crash the layout explains (stage 1 failed: the probe saw another IPA) is not run again.
    runs.clear()
    other = j.layout.vcpu_ipas[0] + 0x40

    def explained(jobs: list[kvm_job.Job], *_: object) -> object:
        runs.append(jobs)
        return HOST, ((answers(j, v0=other), crashed),)

    monkeypatch.setattr(kvmprove, "run_host", explained)
    (rep,) = kvmprove.prove_many([j], None, 10.0)  # type: ignore[arg-type]
    assert len(runs) == 1 and rep.guest is not None and not rep.guest.unexplained


def test_guest_that_never_finishes_is_a_fail_naming_why() -> None:
    lay, plan = _guest_plan()
    rep = kvmguest.judge(lay, plan, ["error: KVM_RUN vCPU 1: Bad address"], [], True)
    assert rep.verdict == "fail" and rep.stolen_time_line is None
    assert rep.failures[0] == (
        "finished: the guest did not complete its report and power off (error: KVM_RUN vCPU 1: "
        "Bad address); last line: no console output"
    )


def test_guest_output_reads_the_kvm_guests_tagged_console() -> None:
    reg = "00 00 00 00 40 00 00 00 00 00 00 00 80 00 00 00"
    console = [
        "[    1.000000] pvdesc-iomem: 40000000-bfffffff : System RAM",
        "[    1.100000] pvdesc-stat1: cpu0 1 2 3 4 5 6 7 9",
        f"[    1.200000] pvdesc-dt: memory@40000000/reg: {reg}",
        "[    2.000000] other-iomem: not ours",
        "pvdesc-iomem: no timestamp, not the kernel's",
    ]
    tags = guest_output.tagged(console, "pvdesc-")
    assert tags == {
        "iomem": ["40000000-bfffffff : System RAM"],
        "stat1": ["cpu0 1 2 3 4 5 6 7 9"],
        "dt": [f"memory@40000000/reg: {reg}"],
    }
    # The 8th value of each cpuN line; the all-CPU "cpu" line and short lines are not CPUs.
    stat = [*tags["stat1"], "cpu  1 2 3 4 5 6 7 8", "cpu1 1 2"]
    assert guest_output.steal_ticks(stat) == {0: 9}
    cells = ["#address-cells: 00 00 00 02", "#size-cells: 00 00 00 02"]
    dt = guest_output.parse_devicetree("\n".join([*cells, *tags["dt"]]))
    assert dt.memory == (Labelled(Range(0x40000000, 0x80000000), "memory@40000000"),)
