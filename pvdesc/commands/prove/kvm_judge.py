"""Judge a ``prove --kvm`` probe run: KVM's answers per vCPU, and ``pvdesc check``'s
rules on the IPAs KVM reported."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from pvdesc import kvm
from pvdesc.audit import check
from pvdesc.commands.prove import kvm_guest as kvmguest
from pvdesc.commands.prove.kvm_host import HostInfo, JobOutput
from pvdesc.commands.prove.kvm_job import Job
from pvdesc.core.findings import Finding, Severity
from pvdesc.core.ranges import Range
from pvdesc.core.units import vcpus_text
from pvdesc.emit import hypervisor
from pvdesc.layout.allocate import Layout
from pvdesc.read import acpitables, dtb
from pvdesc.tools import qemu

#: The VMM's exit status when the host lacks KVM or stolen time (vmm/pvdesc-vmm.c).
VMM_NO_KVM = 3
#: SMCCC return values (include/linux/arm-smccc.h): NOT_SUPPORTED is -1.
SMCCC_SUCCESS = 0
SMCCC_NOT_SUPPORTED = -1
#: SMCCC 1.1 is the first version with SMCCC_ARCH_FEATURES (Arm DEN0028).
SMCCC_1_1 = 0x10001
#: The byte the VMM fills each structure with before the run.
POISON_WORD = 0xA5A5A5A5

_KV_RE = re.compile(r"(\w+) (0x[0-9a-fA-F]+|-?\d+)")


class VcpuAnswer(NamedTuple):
    """What KVM answered on one vCPU.

    Attributes:
        id: the vCPU id.
        configured_ipa: the config's ``pvtime_ipa`` (``None``: left unset on purpose).
        smccc_version: ``SMCCC_VERSION``.
        arch_features: ``SMCCC_ARCH_FEATURES(PV_TIME_FEATURES)`` (0: implemented).
        features: ``PV_TIME_FEATURES(PV_TIME_ST)`` (0 supported, -1 not).
        reported_ipa: ``PV_TIME_ST``'s answer, or ``None`` when it answered -1.
        revision: the structure's revision as read back, or ``None`` (nothing to read).
        attributes: its attributes, or ``None``.
        stolen_time: its stolen_time, or ``None``.
    """

    id: int
    configured_ipa: int | None
    smccc_version: int
    arch_features: int
    features: int
    reported_ipa: int | None
    revision: int | None
    attributes: int | None
    stolen_time: int | None


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_answers(lines: Sequence[str]) -> dict[int, VcpuAnswer]:
    """The ``vcpu N ...`` lines of a probe run."""
    out = {}
    for line in lines:
        if not line.startswith("vcpu "):
            continue
        kv = {k: int(v, 0) for k, v in _KV_RE.findall(line)}
        vid = kv["vcpu"]
        st = _signed(kv["pv_time_st"])
        ipa = kv["ipa"]
        out[vid] = VcpuAnswer(
            id=vid,
            configured_ipa=None if ipa == (1 << 64) - 1 else ipa,
            smccc_version=_signed(kv["smccc_version"]),
            arch_features=_signed(kv["arch_features"]),
            features=_signed(kv["pv_features"]),
            reported_ipa=None if st < 0 else st,
            revision=kv.get("revision"),
            attributes=kv.get("attributes"),
            stolen_time=kv.get("stolen_time"),
        )
    return out


class KvmReport(NamedTuple):
    """Everything one ``prove --kvm`` run showed for one description.

    Attributes:
        job: what was run.
        host: the emulated KVM host.
        vmm_lines: the VMM's own lines (``pvdesc-vmm: ...``).
        vcpus: KVM's answers, by vCPU id.
        findings: problems (errors fail) and notes, errors first.
        no_result: why there is no result (the host lacks KVM, the VMM never ran), or ``None``.
        guest: the second stage (a Linux guest under KVM), or ``None`` when not asked for.
    """

    job: Job
    host: HostInfo
    vmm_lines: tuple[str, ...]
    vcpus: tuple[VcpuAnswer, ...]
    findings: tuple[Finding, ...]
    no_result: str | None = None
    guest: kvmguest.GuestReport | None = None

    @property
    def layout(self) -> Layout:
        return self.job.layout

    @property
    def probe_passed(self) -> bool:
        """The first stage: a result, every vCPU answered as configured, no error finding."""
        return self.no_result is None and not check.unsafe(self.findings)

    @property
    def passed(self) -> bool:
        """The first stage passed, and the guest (where it ran) passed."""
        return self.probe_passed and (self.guest is None or self.guest.verdict != "fail")

    @property
    def failures(self) -> tuple[str, ...]:
        """One phrase per error finding, then the guest's failures."""
        out = [f"{f.code}: {f.message}" for f in self.findings if f.severity is Severity.ERROR]
        if self.guest is not None and self.guest.verdict == "fail":
            out += [f"guest: {x}" for x in self.guest.failures if not x.startswith("stage-1")]
        return tuple(out)


def check_reported(job: Job, reported: Sequence[tuple[int, int]]) -> tuple[Finding, ...]:
    """``pvdesc check``'s rules on the addresses KVM reported (not the configured ones).

    The firmware description is the build's own (``NAME.dtb`` and any ACPI tables);
    the target is the build's hypervisor config with its IPAs replaced by KVM's answers.
    This is the one place ``prove --kvm`` calls :mod:`pvdesc.audit.check`.
    """
    name = job.layout.description.name
    tree = dtb.parse(job.output(".dtb").data, f"{name}.dtb")
    target = hypervisor.target_from_data(job.hypervisor, f"{name}.hypervisor.json")
    target = target._replace(vcpu_ipas=tuple(reported), source="KVM PV_TIME_ST answers")
    tables = [acpitables.parse(o.data, o.name) for o in job.outputs if o.name.endswith(".aml")]
    return check.check(tree, target, job.layout.description.boot, tables)


def _finding(code: str, message: str, r: Range, source: str) -> Finding:
    return Finding(Severity.ERROR, code, message, r, source)


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in sorted(ids):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _per_run(
    ids: Sequence[int], code: str, text: str, job: Job, ipa_of: dict[int, int | None]
) -> list[Finding]:
    """One error finding per run of consecutive vCPU ids (as check groups them)."""
    out = []
    for lo, hi in _runs(ids):
        ipas = [ipa_of.get(i) for i in range(lo, hi + 1)]
        known = [a for a in ipas if a is not None]
        r = (
            Range(min(known), max(known) + kvm.PVTIME_STRUCT_SIZE - min(known))
            if known
            else job.layout.region
        )
        out.append(_finding(code, f"{vcpus_text(lo, hi)}: {text}", r, "KVM"))
    return out


def judge(job: Job, host: HostInfo, out: JobOutput) -> KvmReport:
    """Judge one probe run from what KVM answered."""
    hyp = job.hypervisor
    configured = {v["id"]: v["pvtime_ipa"] for v in hyp["vcpus"]}
    nothing = KvmReport(job, host, out.lines, (), ())
    no_kvm = next((ln for ln in out.lines if ln.startswith("no-kvm: ")), None)
    if out.status == VMM_NO_KVM or no_kvm is not None:
        why = no_kvm[len("no-kvm: ") :] if no_kvm else "the VMM found no usable KVM"
        return nothing._replace(no_result=f"the host has no usable KVM: {why}; {host.kvm_line}")
    if out.status is None:
        return nothing._replace(no_result="the host never finished the VMM run (it crashed?)")
    errors = [ln for ln in out.lines if ln.startswith("error: ")]
    if errors:
        msg = errors[0][len("error: ") :]
        return nothing._replace(
            findings=(_finding("vmm-refused", f"KVM or the VMM refused: {msg}", job.layout.region,
                               "pvdesc-vmm"),),
        )  # fmt: skip
    answers = parse_answers(out.lines)
    if not answers:
        last = (out.other or ("no output",))[-1]
        return nothing._replace(
            no_result=f"the VMM printed no answer (exit {out.status}): {qemu.serial_line(last)}",
        )
    findings: list[Finding] = []
    reported_of = {a.id: a.reported_ipa for a in answers.values()}
    missing = [i for i in configured if i not in answers]
    findings += _per_run(missing, "no-answer", "the VMM reported no answer", job, configured)
    vals = list(answers.values())
    old = [a.id for a in vals if a.smccc_version < SMCCC_1_1]
    findings += _per_run(
        old, "smccc-version", "SMCCC_VERSION is below 1.1: no SMCCC_ARCH_FEATURES", job, configured
    )
    undiscoverable = [a.id for a in vals if a.arch_features != SMCCC_SUCCESS]
    findings += _per_run(
        undiscoverable,
        "pv-time-not-discoverable",
        "SMCCC_ARCH_FEATURES(PV_TIME_FEATURES) did not answer 0: the guest cannot find PV time",
        job,
        configured,
    )
    unsupported = [a.id for a in vals if a.features != SMCCC_SUCCESS]
    findings += _per_run(
        unsupported,
        "pv-time-not-supported",
        "PV_TIME_FEATURES(PV_TIME_ST) answered NOT_SUPPORTED (-1): KVM has no stolen-time "
        "IPA for this vCPU, so the guest runs without stolen time",
        job,
        configured,
    )
    mismatch = [
        a.id for a in vals if a.reported_ipa is not None and a.reported_ipa != configured.get(a.id)
    ]
    findings += _per_run(
        mismatch,
        "ipa-mismatch",
        "PV_TIME_ST reported an IPA other than the config's pvtime_ipa",
        job,
        reported_of,
    )
    unwritten = [
        a.id
        for a in vals
        if a.reported_ipa is not None and (a.revision != kvm.PVTIME_REVISION or a.attributes != 0)
    ]
    findings += _per_run(
        unwritten,
        "structure-not-written",
        "the 64-byte structure at the reported IPA does not read revision 0, attributes 0 "
        f"(the VMM filled it with {POISON_WORD:#x} before the run): KVM did not write it there",
        job,
        reported_of,
    )
    reported = [(a.id, a.reported_ipa) for a in vals if a.reported_ipa is not None]
    if reported:
        findings += check_reported(job, reported)
    findings.sort(key=Finding.sort_key)
    return KvmReport(
        job, host, out.lines, tuple(answers[i] for i in sorted(answers)), tuple(findings)
    )


# --- entry points ---------------------------------------------------------------------------
