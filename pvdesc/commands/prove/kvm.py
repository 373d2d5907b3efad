"""``pvdesc prove --kvm``: give a build's hypervisor config to real KVM and judge what KVM answers.

There is no arm64 KVM on an x86 machine, but KVM runs inside an emulated arm64
machine that has EL2: ``qemu-system-aarch64 -machine virt,virtualization=on,gic-version=3
-cpu max`` (TCG) booting Debian's arm64 kernel is a real KVM host.  In its
initramfs runs the project's own VMM, ``vmm/pvdesc-vmm.c`` (static, cross-compiled
with ``aarch64-linux-gnu-gcc``, cached outside the repository by source hash,
:func:`vmm_binary`), configured from the build's own outputs:

- the memslots exactly as ``NAME.hypervisor.json`` lists them, and every possible
  vCPU's ``pvtime_ipa`` (a small text config, :func:`vmm_config`);
- where the build writes ``NAME.h`` (generic-kvm), the VMM is also compiled against
  that header, refuses to run unless header and config agree, and configures KVM
  from the header.

On every vCPU a bare-metal payload asks KVM ``SMCCC_VERSION``,
``SMCCC_ARCH_FEATURES(PV_TIME_FEATURES)``, ``PV_TIME_FEATURES(PV_TIME_ST)`` and
``PV_TIME_ST``; the VMM reads back the 64-byte structure at the reported address
(poisoned beforehand, so revision 0 / attributes 0 is KVM's writing).  The verdict
uses what KVM *reported*: each reported IPA equals the config's, and ``pvdesc
check``'s rules (aligned, in a memslot, outside every range the firmware
description calls usable RAM) hold for the reported addresses (:func:`check_reported`).

One emulated host boot can run many configs (:func:`prove_many`): the test suite
proves every example in a single boot; ``pvdesc prove --kvm`` proves one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from pvdesc import kvm
from pvdesc.audit import check
from pvdesc.audit.findings import Severity
from pvdesc.commands.prove import guest, verdict
from pvdesc.commands.prove import kvm_guest as kvmguest
from pvdesc.core.model import Purpose
from pvdesc.core.ranges import Range
from pvdesc.description.load import LoadedDescription, load
from pvdesc.emit import build, templating
from pvdesc.errors import ProveError, PvdescError, ToolError
from pvdesc.layout import allocate as layout
from pvdesc.layout.allocate import Layout
from pvdesc.read import acpitables, dtb
from pvdesc.tools import proc, qemu

FORMAT = "pvdesc.prove/1"
#: The emulated KVM host: EL2 (``virtualization=on``) and a GICv3 with the virtualization
#: interface KVM's vGIC needs; 2 CPUs and 2 GiB as measured.
HOST_MACHINE = "virt,virtualization=on,gic-version=3"
HOST_MEMORY = 2 << 30
HOST_SMP = 2
#: ``quiet`` keeps the host's kernel log off the console (its KVM line is read with dmesg);
#: ``panic=-1`` + ``-no-reboot``: a panicking host ends at once.
HOST_APPEND = "console=ttyAMA0 quiet panic=-1"
#: Seconds for the whole host run (boot ~12 s, each probe well under a second).
DEFAULT_TIMEOUT = 300.0
CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_INSTALL = (
    "install it with: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross "
    "(scripts/setup --test does)"
)
#: Flags of every VMM build: a static binary runs in a busybox initramfs.
CFLAGS = ("-static", "-O2", "-pthread", "-Wall", "-Wextra")
COMPILE_TIMEOUT = 120.0
#: The VMM source, shipped in the package (``pvdesc/vmm`` links to the repository's ``vmm/``).
#: The VMM's C source: ``vmm/`` at the top of the tree, shipped as the package ``pvdesc.vmm``.
VMM_SOURCE = Path(str(resources.files("pvdesc.vmm").joinpath("pvdesc-vmm.c")))
#: What the VMM prints (``pvdesc-vmm: ...``) and the host's markers around each job.
VMM_PREFIX = "pvdesc-vmm: "
HOST_PREFIX = "PVDESC-HOST "
JOB_BEGIN = "PVDESC-JOB-BEGIN"
JOB_END = "PVDESC-JOB-END"
#: The VMM's exit status when the host lacks KVM or stolen time (vmm/pvdesc-vmm.c).
VMM_NO_KVM = 3
#: SMCCC return values (include/linux/arm-smccc.h): NOT_SUPPORTED is -1.
SMCCC_SUCCESS = 0
SMCCC_NOT_SUPPORTED = -1
#: SMCCC 1.1 is the first version with SMCCC_ARCH_FEATURES (Arm DEN0028).
SMCCC_1_1 = 0x10001
#: The byte the VMM fills each structure with before the run.
POISON_WORD = 0xA5A5A5A5
#: A page of the payload; the report window (no memslot) is one page too.
PAGE = 0x1000

_KV_RE = re.compile(r"(\w+) (0x[0-9a-fA-F]+|-?\d+)")


# --- the VMM ------------------------------------------------------------------------------


def _c_name(name: str) -> str:
    return name.replace("-", "_")


@dataclass(frozen=True)
class Header:
    """A generated C header to compile the VMM against (``NAME.h``, generic-kvm).

    Attributes:
        name: its file name.
        data: its bytes.
        vm: the VM name (the header's identifiers derive from it).
    """

    name: str
    data: bytes
    vm: str


def vmm_binary(header: Header | None = None) -> Path:
    """The VMM, cross-compiled once into the cache (keyed by source, header and flags).

    Raises :class:`ToolError` naming the install command when the cross-compiler is
    missing, and quoting the compiler when the build fails.
    """
    source = VMM_SOURCE.read_bytes()
    flags = list(CFLAGS)
    if header is not None:
        lower = f"pvdesc_{_c_name(header.vm)}"
        flags += [
            f'-DPVDESC_HEADER="{header.name}"',
            f"-DHDR_PREFIX={lower.upper()}",
            f"-DHDR_LOWER={lower}",
        ]
    key = hashlib.sha256()
    for part in (source, header.data if header else b"", "\0".join(flags).encode()):
        key.update(hashlib.sha256(part).digest())
    out = vmm_cache_dir() / key.hexdigest()[:32] / "pvdesc-vmm"
    if out.is_file():
        return out
    cc = proc.program(CROSS_CC, CROSS_INSTALL)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=out.parent) as tmp:
            if header is not None:
                (Path(tmp) / header.name).write_bytes(header.data)
            exe = Path(tmp) / "pvdesc-vmm"
            res = proc.run_checked(
                [cc, *flags, "-I", tmp, "-o", str(exe), str(VMM_SOURCE)],
                timeout=COMPILE_TIMEOUT,
            )
            if res.returncode != 0 or not exe.is_file():
                first = next((ln for ln in res.stderr.splitlines() if "error:" in ln), None)
                why = qemu.serial_line(first, 300) if first else proc.summary(res)
                raise ToolError(f"cannot build {VMM_SOURCE.name}: {why}", CROSS_CC)
            os.replace(exe, out)
    except OSError as exc:
        raise ToolError(f"cannot write the VMM cache: {exc.strerror or exc}", str(out)) from None
    return out


def vmm_cache_dir() -> Path:
    """Where built VMMs are kept, beside the guest parts (outside the repository)."""
    return guest.cache_dir().parent / "vmm"


# --- one job: a build's outputs as a VMM config -------------------------------------------


@dataclass(frozen=True)
class Job:
    """One VMM run inside the host.

    Attributes:
        loaded: the description.
        layout: the layout (possibly hand-made: the negative controls).
        outputs: the build's outputs for it.
        config: the VMM config text.
        vmm: the VMM binary on this machine.
        header: the header it was compiled against, or ``None``.
        unset: vCPU ids whose PVTIME_IPA the VMM was told to leave unset.
        guest: the second stage (a Linux guest), or ``None``.
        guest_reason: why there is no second stage when one was asked for, or ``None``.
    """

    loaded: LoadedDescription
    layout: Layout
    outputs: tuple[build.Output, ...]
    config: str
    vmm: Path
    header: str | None
    unset: tuple[int, ...] = ()
    guest: kvmguest.Plan | None = None
    guest_reason: str | None = None

    @property
    def linux(self) -> bool:
        """True when the second stage was asked for (run or not)."""
        return self.guest is not None or self.guest_reason is not None

    def output(self, suffix: str) -> build.Output:
        """The output ``NAME<suffix>``."""
        name = f"{self.layout.description.name}{suffix}"
        return next(o for o in self.outputs if o.name == name)

    @property
    def hypervisor(self) -> dict[str, Any]:
        """The build's ``NAME.hypervisor.json`` as data."""
        data: dict[str, Any] = json.loads(self.output(".hypervisor.json").data)
        return data


def payload_page(slots: Sequence[tuple[Range, str]], region: Range) -> int:
    """A 4 KiB page of a RAM memslot clear of the region's granules, for the probe payload."""
    avoid = region.granules()
    for r, purpose in slots:
        if purpose != str(Purpose.RAM):
            continue
        for base in (r.base, avoid.end):
            page = Range(base, PAGE)
            if r.contains(page) and not page.overlaps(avoid):
                return base
    raise ProveError("no RAM memslot has a page clear of the region for the probe", ("memory",))


def report_window(slots: Sequence[tuple[Range, str]], ipa_bits: int) -> int:
    """The lowest 64 KiB-aligned page outside every memslot: the payload's stores there exit."""
    cursor = 0
    for r, _ in sorted(slots, key=lambda s: s[0].base):
        if cursor + PAGE <= r.base:
            break
        cursor = max(cursor, -(-r.end // kvm.GRANULE) * kvm.GRANULE)
    if cursor + PAGE > 1 << ipa_bits:
        raise ProveError("the memslots leave no IPA free for the probe's MMIO window", ("memory",))
    return cursor


def vmm_config(hyp: dict[str, Any], unset: Sequence[int] = ()) -> str:
    """The VMM's config (vmm/pvdesc-vmm.c) from a ``pvdesc.hypervisor/1`` object, as written."""
    slots = [
        (Range(s["guest_phys_addr"], s["memory_size"]), str(s["purpose"])) for s in hyp["memslots"]
    ]
    st = hyp["stolen_time"]
    region = Range(st["base"], st["size"])
    lines = [f"# pvdesc-vmm config for {hyp['vm']} (from {hyp['vm']}.hypervisor.json)"]
    lines.append(f"ipa_bits {hyp['ipa_bits']}")
    for s in hyp["memslots"]:
        lines.append(
            f"memslot {s['slot']} {s['guest_phys_addr']:#x} {s['memory_size']:#x} {s['purpose']}"
        )
    lines.append(f"vcpus {len(hyp['vcpus'])}")
    for v in hyp["vcpus"]:
        if v["id"] not in unset:
            lines.append(f"ipa {v['id']} {v['pvtime_ipa']:#x}")
    lines.append(f"payload {payload_page(slots, region):#x}")
    lines.append(f"report {report_window(slots, hyp['ipa_bits']):#x}")
    return "\n".join(lines) + "\n"


def make_job(
    loaded: LoadedDescription,
    lay: Layout,
    unset: Sequence[int] = (),
    linux: guest.GuestParts | None = None,
) -> Job:
    """Render the outputs for ``lay`` and prepare the VMM run (header variant where there is one).

    ``unset`` (negative control) leaves those vCPUs' IPAs unset; such a run uses the
    config-only VMM, since the header would set them.  ``linux`` (the guest parts) adds
    the second stage: a Linux guest booted by the same VMM (:mod:`pvdesc.commands.prove.kvm_guest`).
    """
    try:
        outputs = build.render_outputs(loaded, lay)
        name = lay.description.name
        files = {o.name: o for o in outputs}
        hyp = json.loads(files[f"{name}.hypervisor.json"].data)
        config = vmm_config(hyp, unset)
    except PvdescError as err:
        raise loaded.source.resolve(err) from None
    header = files.get(f"{name}.h")
    use = Header(header.name, header.data, name) if header is not None and not unset else None
    plan, reason = None, None
    if linux is not None:
        try:
            plan, reason = kvmguest.plan(
                loaded, lay, kernel_image(linux.kernel), linux.busybox.read_bytes()
            )
        except PvdescError as err:
            raise loaded.source.resolve(err) from None
    return Job(
        loaded,
        lay,
        outputs,
        config,
        vmm_binary(use),
        use.name if use else None,
        tuple(unset),
        plan,
        reason,
    )


_IMAGES: dict[tuple[str, int, int], kvmguest.Image] = {}


def kernel_image(path: Path) -> kvmguest.Image:
    """:func:`pvdesc.commands.prove.kvm_guest.read_image`, once per file version."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _IMAGES:
        _IMAGES.clear()
        _IMAGES[key] = kvmguest.read_image(path)
    return _IMAGES[key]


# --- the host -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HostInfo:
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


@dataclass(frozen=True)
class JobOutput:
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
    timeout: float = DEFAULT_TIMEOUT,
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


# --- judging --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VcpuAnswer:
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


@dataclass(frozen=True)
class KvmReport:
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
    findings: tuple[check.Finding, ...]
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


def check_reported(job: Job, reported: Sequence[tuple[int, int]]) -> tuple[check.Finding, ...]:
    """``pvdesc check``'s rules on the addresses KVM reported (not the configured ones).

    The firmware description is the build's own (``NAME.dtb`` and any ACPI tables);
    the target is the build's hypervisor config with its IPAs replaced by KVM's answers.
    This is the one place ``prove --kvm`` calls :mod:`pvdesc.audit.check`.
    """
    name = job.layout.description.name
    tree = dtb.parse(job.output(".dtb").data, f"{name}.dtb")
    target = check.target_from_data(job.hypervisor, f"{name}.hypervisor.json")
    target = replace(target, vcpu_ipas=tuple(reported), source="KVM PV_TIME_ST answers")
    tables = [acpitables.parse(o.data, o.name) for o in job.outputs if o.name.endswith(".aml")]
    return check.check(tree, target, job.layout.description.boot, tables)


def _finding(code: str, message: str, r: Range, source: str) -> check.Finding:
    return check.Finding(Severity.ERROR, code, message, r, source)


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
) -> list[check.Finding]:
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
        out.append(_finding(code, f"{check.vcpus_text(lo, hi)}: {text}", r, "KVM"))
    return out


def judge(job: Job, host: HostInfo, out: JobOutput) -> KvmReport:
    """Judge one probe run from what KVM answered."""
    hyp = job.hypervisor
    configured = {v["id"]: v["pvtime_ipa"] for v in hyp["vcpus"]}
    nothing = KvmReport(job, host, out.lines, (), ())
    no_kvm = next((ln for ln in out.lines if ln.startswith("no-kvm: ")), None)
    if out.status == VMM_NO_KVM or no_kvm is not None:
        why = no_kvm[len("no-kvm: ") :] if no_kvm else "the VMM found no usable KVM"
        return replace(nothing, no_result=f"the host has no usable KVM: {why}; {host.kvm_line}")
    if out.status is None:
        return replace(nothing, no_result="the host never finished the VMM run (it crashed?)")
    errors = [ln for ln in out.lines if ln.startswith("error: ")]
    if errors:
        msg = errors[0][len("error: ") :]
        return replace(
            nothing,
            findings=(_finding("vmm-refused", f"KVM or the VMM refused: {msg}", job.layout.region,
                               "pvdesc-vmm"),),
        )  # fmt: skip
    answers = parse_answers(out.lines)
    if not answers:
        last = (out.other or ("no output",))[-1]
        return replace(
            nothing,
            no_result=f"the VMM printed no answer (exit {out.status}): {qemu.serial_line(last)}",
        )
    findings: list[check.Finding] = []
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
    findings.sort(key=lambda f: (f.severity.rank, f.range.base, f.code))
    return KvmReport(
        job, host, out.lines, tuple(answers[i] for i in sorted(answers)), tuple(findings)
    )


# --- entry points ---------------------------------------------------------------------------


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
    return tuple(
        judge_both(job, host, probe_out, linux_out)
        for job, (probe_out, linux_out) in zip(jobs, outs, strict=True)
    )


def judge_both(
    job: Job, host: HostInfo, probe_out: JobOutput, linux_out: JobOutput | None
) -> KvmReport:
    """:func:`judge` the probe, then the Linux guest (:func:`.kvm_guest.judge`)."""
    report = judge(job, host, probe_out)
    if not job.linux or report.no_result is not None:
        return report
    if job.guest is None or linux_out is None:
        return replace(report, guest=kvmguest.GuestReport("not-run", reason=job.guest_reason))
    if linux_out.status is None:
        return replace(
            report, no_result="the host never finished the Linux guest's VMM run (it crashed?)"
        )
    rep = kvmguest.judge(
        job.layout, job.guest, linux_out.lines, linux_out.other, report.probe_passed
    )
    return replace(report, guest=rep)


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
        "findings": [f.to_json() for f in report.findings],
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
