"""The emulated arm64 KVM host of ``prove --kvm``: its machine, its initramfs of VMM jobs,
one boot that runs them all, and each job's output split from the console."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pvdesc.commands.prove import guest
from pvdesc.commands.prove.kvm_job import Job, kernel_image
from pvdesc.emit import templating
from pvdesc.errors import ProveError, ToolError
from pvdesc.tools import qemu

#: The emulated KVM host: EL2 (``virtualization=on``) and a GICv3 with the virtualization
#: interface KVM's vGIC needs; 2 CPUs and 2 GiB as measured.
HOST_MACHINE = "virt,virtualization=on,gic-version=3"
HOST_MEMORY = 2 << 30
HOST_SMP = 2
#: ``quiet`` keeps the host's kernel log off the console (its KVM line is read with dmesg);
#: ``panic=-1`` + ``-no-reboot``: a panicking host ends at once.
HOST_APPEND = "console=ttyAMA0 quiet panic=-1"
#: What the VMM prints (``pvdesc-vmm: ...``) and the host's markers around each job.
VMM_PREFIX = "pvdesc-vmm: "
HOST_PREFIX = "PVDESC-HOST "
JOB_BEGIN = "PVDESC-JOB-BEGIN"
JOB_END = "PVDESC-JOB-END"


class HostInfo(NamedTuple):
    """The emulated KVM host.

    Attributes:
        kernel: its ``uname -r`` and Debian package.
        kvm_line: its kernel's KVM line(s) (``kvm [1]: VHE mode initialized successfully``).
        argv: the QEMU command line.
        seconds: wall time of the whole host run.
    """

    kernel: str
    kvm_line: str
    argv: tuple[str, ...]
    seconds: float


class JobOutput(NamedTuple):
    """What one VMM run printed.

    Attributes:
        lines: its ``pvdesc-vmm:`` lines (prefix removed).
        other: every other line it printed (the compiler/loader, guest console).
        status: its exit status, or ``None`` when the host never finished it.
    """

    lines: tuple[str, ...]
    other: tuple[str, ...]
    status: int | None


def host_machine() -> qemu.Machine:
    """The emulated arm64 KVM host."""
    return qemu.Machine(
        memory=HOST_MEMORY, smp=HOST_SMP, machine=HOST_MACHINE, cpu="max", append=HOST_APPEND
    )


def host_initramfs(busybox: bytes, jobs: Sequence[Job]) -> bytes:
    """The host's initramfs: busybox, each distinct VMM binary, each job's config, ``/init``."""
    files = [guest.CpioFile(d, mode=0o040755) for d in ("vmm", "jobs")]
    vmms: dict[Path, str] = {}
    for job in jobs:
        if job.vmm not in vmms:
            vmms[job.vmm] = f"vmm/{len(vmms)}"
            files.append(guest.CpioFile(vmms[job.vmm], job.vmm.read_bytes(), 0o100755))
    runs = []
    image_added = False
    for i, job in enumerate(jobs):
        conf = f"jobs/{i}.conf"
        files.append(guest.CpioFile(conf, job.config.encode()))
        runs.append({"label": str(i), "vmm": vmms[job.vmm], "mode": "probe", "config": conf})
        if job.guest is None:
            continue
        if not image_added:
            files.append(guest.CpioFile("guest", mode=0o040755))
            files.append(guest.CpioFile("guest/Image", kernel_image(job.guest.kernel_path).data))
            image_added = True
        paths = {"kernel": "/guest/Image", "dtb": f"/jobs/{i}.dtb", "initrd": f"/jobs/{i}.initrd"}
        files.append(guest.CpioFile(paths["dtb"][1:], job.guest.dtb_blob))
        files.append(guest.CpioFile(paths["initrd"][1:], job.guest.initrd_blob))
        lconf = f"jobs/{i}.linux.conf"
        files.append(guest.CpioFile(lconf, job.guest.config(job.config, paths).encode()))
        runs.append({"label": f"{i}-linux", "vmm": vmms[job.vmm], "mode": "linux", "config": lconf})
    init = templating.render(
        "kvm-host-init.sh.j2",
        jobs=runs,
        host=HOST_PREFIX,
        begin=JOB_BEGIN,
        end=JOB_END,
    )
    return guest.initramfs(busybox, init, files)


def run_host(
    jobs: Sequence[Job],
    parts: guest.GuestParts,
    timeout: float,
    machine: qemu.Machine | None = None,
) -> tuple[HostInfo, tuple[tuple[JobOutput, JobOutput | None], ...]]:
    """Boot the emulated KVM host (``machine``, default :func:`host_machine`) once and run
    every job in it, in order: each job's probe output, and its Linux run's when it has one."""
    if not timeout > 0:
        raise ProveError(f"the timeout must be positive, not {timeout:g}", "--timeout")
    initrd = host_initramfs(parts.busybox.read_bytes(), jobs)
    begin = time.perf_counter()
    res = qemu.run_machine(machine or host_machine(), parts.kernel, initrd, timeout)
    seconds = time.perf_counter() - begin
    lines = [ln.rstrip("\r") for ln in res.stdout.split("\n")]
    host = [ln[len(HOST_PREFIX) :] for ln in lines if ln.startswith(HOST_PREFIX)]
    release = next((ln[len("kernel ") :] for ln in host if ln.startswith("kernel ")), "")
    kvm_lines = [ln[len("log ") :] for ln in host if ln.startswith("log ") and "kvm [" in ln]
    kernel = f"{release} ({parts.kernel_package})" if parts.kernel_package else release
    info = HostInfo(
        kernel=kernel or "unknown (the host printed no uname)",
        kvm_line=_kvm_line(kvm_lines),
        argv=res.argv,
        seconds=seconds,
    )
    outs: list[tuple[JobOutput, JobOutput | None]] = []
    for i, job in enumerate(jobs):
        second = _job_output(lines, f"{i}-linux") if job.guest is not None else None
        outs.append((_job_output(lines, str(i)), second))
    if not release:
        raise ToolError(
            "the emulated KVM host never ran its init; last line: "
            + qemu.serial_line(next((ln for ln in reversed(lines) if ln.strip()), "")),
            qemu.QEMU,
        )
    return info, tuple(outs)


def _kvm_line(lines: Sequence[str]) -> str:
    """The host's telling KVM line(s): KVM's verdict on EL2 ("VHE mode initialized
    successfully", "HYP mode not available") where printed, else every ``kvm [`` line."""
    mode = [ln for ln in lines if " mode " in ln]
    chosen = mode or list(lines)
    if not chosen:
        return "no 'kvm [' line in the host's kernel log"
    return " | ".join(qemu.serial_line(ln) for ln in chosen)


def _job_output(lines: Sequence[str], i: str) -> JobOutput:
    try:
        start = lines.index(f"{JOB_BEGIN} {i}")
    except ValueError:
        return JobOutput((), (), None)
    mine: list[str] = []
    other: list[str] = []
    status = None
    for ln in lines[start + 1 :]:
        if ln.startswith(f"{JOB_END} {i} "):
            status = int(ln.split()[-1])
            break
        if ln.startswith(VMM_PREFIX):
            mine.append(ln[len(VMM_PREFIX) :])
        elif ln.strip():
            other.append(ln)
    return JobOutput(tuple(mine), tuple(other), status)
