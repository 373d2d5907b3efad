"""``pvdesc prove --kvm``: give a build's hypervisor config to real KVM and judge what KVM answers.

There is no arm64 KVM on an x86 machine, but KVM runs inside an emulated arm64
machine that has EL2: ``qemu-system-aarch64 -machine virt,virtualization=on,gic-version=3
-cpu max`` (TCG) booting Debian's arm64 kernel is a real KVM host.  In its
initramfs runs the project's own VMM, ``vmm/pvdesc-vmm.c`` (static, cross-compiled
with ``aarch64-linux-gnu-gcc``, cached outside the repository by source hash,
:func:`.kvm_vmm.vmm_binary`), configured from the build's own outputs:

- the memslots exactly as ``NAME.hypervisor.json`` lists them, and every possible
  vCPU's ``pvtime_ipa`` (a small text config, :func:`.kvm_job.vmm_config`);
- where the build writes ``NAME.h`` (generic-kvm), the VMM is also compiled against
  that header, refuses to run unless header and config agree, and configures KVM
  from the header.

On every vCPU a bare-metal payload asks KVM ``SMCCC_VERSION``,
``SMCCC_ARCH_FEATURES(PV_TIME_FEATURES)``, ``PV_TIME_FEATURES(PV_TIME_ST)`` and
``PV_TIME_ST``; the VMM reads back the 64-byte structure at the reported address
(poisoned beforehand, so revision 0 / attributes 0 is KVM's writing).  The verdict
uses what KVM *reported*: each reported IPA equals the config's, and ``pvdesc
check``'s rules (aligned, in a memslot, outside every range the firmware
description calls usable RAM) hold for the reported addresses (:func:`.kvm_judge.check_reported`).

One emulated host boot can run many configs (:func:`prove_many`): the test suite
proves every example in a single boot; ``pvdesc prove --kvm`` proves one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvdesc.audit import check
from pvdesc.commands.prove import guest, verdict
from pvdesc.commands.prove import kvm_guest as kvmguest
from pvdesc.commands.prove.kvm_host import HostInfo, JobOutput, run_host
from pvdesc.commands.prove.kvm_job import Job, make_job
from pvdesc.commands.prove.kvm_judge import KvmReport, VcpuAnswer, judge
from pvdesc.description.load import LoadedDescription, load
from pvdesc.emit import templating
from pvdesc.errors import PvdescError, ToolError
from pvdesc.layout import allocate as layout
from pvdesc.layout.allocate import Layout
from pvdesc.tools import qemu

FORMAT = "pvdesc.prove/1"
#: Seconds for the whole host run (boot ~12 s, each probe well under a second).
DEFAULT_TIMEOUT = 300.0


def prove_many(
    items: Sequence[tuple[LoadedDescription, Layout] | Job],
    parts: guest.GuestParts,
    timeout: float = DEFAULT_TIMEOUT,
    machine: qemu.Machine | None = None,
    linux: bool = False,
) -> tuple[KvmReport, ...]:
    """Prove several layouts in ONE emulated host boot, one VMM run each, in order.

    ``items`` are ``(loaded, layout)`` pairs or prepared :class:`Job` s (a negative
    control's).  ``machine`` replaces the host (tests: one without EL2).  ``linux`` adds
    the second stage to the pairs (a Job has it or not already).  Raises
    :class:`ToolError` when the host itself gives no result.
    """
    jobs = [
        it if isinstance(it, Job) else make_job(*it, linux=parts if linux else None) for it in items
    ]
    host, outs = run_host(jobs, parts, timeout, machine)
    reports = [
        judge_both(job, host, probe_out, linux_out)
        for job, (probe_out, linux_out) in zip(jobs, outs, strict=True)
    ]
    again = [i for i, r in enumerate(reports) if r.guest is not None and r.guest.unexplained]
    if again:
        reports = _boot_again(reports, again, jobs, parts, timeout, machine)
    return tuple(reports)


def _boot_again(
    reports: list[KvmReport],
    again: Sequence[int],
    jobs: Sequence[Job],
    parts: guest.GuestParts,
    timeout: float,
    machine: qemu.Machine | None,
) -> list[KvmReport]:
    """Run the jobs ``again`` (a guest crash or hang the layout does not explain) in one more
    host boot: each second report stands, with the first boot's failures kept in ``earlier``
    (:mod:`.kvm_guest`).  A second boot without an answer leaves the first report."""
    try:
        host, outs = run_host([jobs[i] for i in again], parts, timeout, machine)
    except ToolError:
        return reports
    out = list(reports)
    for i, (probe_out, linux_out) in zip(again, outs, strict=True):
        second = judge_both(jobs[i], host, probe_out, linux_out)
        first = reports[i].guest
        if second.guest is not None and first is not None:
            out[i] = second._replace(guest=second.guest._replace(earlier=first.failures))
    return out


def judge_both(
    job: Job, host: HostInfo, probe_out: JobOutput, linux_out: JobOutput | None
) -> KvmReport:
    """:func:`judge` the probe, then the Linux guest (:func:`.kvm_guest.judge`)."""
    report = judge(job, host, probe_out)
    if not job.linux or report.no_result is not None:
        return report
    if job.guest is None or linux_out is None:
        return report._replace(guest=kvmguest.GuestReport("not-run", reason=job.guest_reason))
    if linux_out.status is None:
        return report._replace(
            no_result="the host never finished the Linux guest's VMM run (it crashed?)"
        )
    rep = kvmguest.judge(
        job.layout, job.guest, linux_out.lines, linux_out.other, report.probe_passed
    )
    return report._replace(guest=rep)


def prove_file(
    path: str | Path, kernel: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT
) -> KvmReport:
    """``pvdesc prove --kvm``: load, allocate, build, boot the KVM host, probe, boot Linux, judge.

    A host without KVM (or without stolen time), or a run that never answered,
    raises :class:`ToolError`: no result, never a pass.
    """
    loaded = load(path)
    try:
        lay = layout.allocate(loaded.description)
    except PvdescError as err:
        raise loaded.source.resolve(err) from None
    (report,) = prove_many([(loaded, lay)], guest.guest_parts(kernel), timeout, linux=True)
    if report.no_result is not None:
        raise ToolError(f"no result: {report.no_result}", "prove --kvm")
    return report


# --- output ---------------------------------------------------------------------------------


def _vcpu_json(a: VcpuAnswer) -> dict[str, Any]:
    return {
        "id": a.id,
        "configured_ipa": a.configured_ipa,
        "reported_ipa": a.reported_ipa,
        "features": a.features,
        "revision": a.revision,
        "attributes": a.attributes,
        "smccc_version": a.smccc_version,
        "arch_features": a.arch_features,
        "stolen_time": a.stolen_time,
    }


def kvm_json(report: KvmReport) -> dict[str, Any]:
    """The ``"kvm"`` object of the JSON document."""
    return {
        "host": {
            "kernel": report.host.kernel,
            "kvm_line": report.host.kvm_line,
            "qemu": list(report.host.argv),
            "seconds": round(report.host.seconds, 1),
        },
        "vmm": {"header": report.job.header, "unset_vcpus": list(report.job.unset)},
        "vcpus": [_vcpu_json(a) for a in report.vcpus],
        "verdict": "pass" if report.probe_passed else "fail",
        "findings": [check.finding_json(f) for f in report.findings],
        "guest": kvmguest.to_json(report.guest) if report.guest is not None else None,
    }


def to_json(report: KvmReport) -> str:
    """The ``pvdesc.prove/1`` document with its ``"kvm"`` object."""
    lay = report.layout
    data = {
        "format": FORMAT,
        "vm": lay.description.name,
        "description": report.job.loaded.source.file,
        "boot": str(lay.description.boot),
        "placement": str(lay.placement),
        "describe": str(lay.describe),
        "region": [lay.region.base, lay.region.end],
        "verdict": "pass" if report.passed else "fail",
        "kvm": kvm_json(report),
        "failures": list(report.failures),
    }
    return json.dumps(data, indent=2) + "\n"


def _hex(value: int | None) -> str:
    return "-" if value is None else f"{value:#x}"


def to_text(report: KvmReport) -> str:
    """The human report (``templates/kvm-prove.txt.j2``)."""
    answers = report.vcpus
    same = [a for a in answers if a.reported_ipa is not None and a.reported_ipa == a.configured_ipa]
    return templating.render(
        "kvm-prove.txt.j2",
        report=report,
        layout=report.layout,
        desc=report.layout.description,
        answers=answers,
        same=len(same),
        hexa=_hex,
        shown=answers if len(answers) <= 16 else (*answers[:8], *answers[-4:]),
        status_text=verdict.STATUS_TEXT,
    )
