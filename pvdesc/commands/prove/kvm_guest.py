"""Stage two of ``prove --kvm``: a real Linux guest under real KVM, booted with pvdesc's tables.

pvdesc's VMM (``vmm/pvdesc-vmm.c``, ``linux`` mode) boots Debian's arm64 kernel as a KVM
guest inside the emulated host, with the same memslots and per-vCPU ``PVTIME_IPA`` as the
first stage, the description's online vCPUs (PSCI 0.2; secondaries through in-kernel PSCI),
an in-kernel vGICv3, the arch timer and a transmit-only 8250 UART.  This module prepares
that run and judges it:

- :func:`read_image`: the kernel ``Image`` as the arm64 boot protocol defines it
  (``Documentation/arch/arm64/booting.rst``: ``text_offset`` at 8, ``image_size`` at 16,
  magic ``ARM\\x64`` at 56); a gzip'd one is decompressed; anything else is refused;
- :func:`plan`: where the kernel, DTB and initrd go in usable RAM, and the DTB itself:
  the VMM's minimal tree (``templates/kvm-guest.dts.j2``, compiled with dtc) with the
  description's ``/memory`` and ``/reserved-memory`` merged in exactly as ``pvdesc build
  --into`` merges (:func:`pvdesc.emit.build.render_outputs`);
- :func:`judge`: what the guest printed (its init writes to ``/dev/kmsg``, which reaches
  the VMM's UART through ``earlycon``/``keep_bootcon``): the kernel's ``arm-pv: using
  stolen time PV`` line, ``/proc/iomem``, each CPU's steal at two moments, the DT it saw,
  and any crash.  Pass only when stolen time is enabled, no ``System RAM`` covers any
  64 KiB granule of the region, the guest's RAM equals the description's usable RAM, and
  the first stage passed.  A guest that crashes or hangs is a fail, quoting it.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvdesc.commands.prove import guest, judging
from pvdesc.commands.prove.verdict import (
    EXPECTED,
    STATUS_TEXT,
    Evidence,
    GranuleResult,
    Observation,
)
from pvdesc.core.model import Boot, Purpose
from pvdesc.core.ranges import Range, merged, subtract
from pvdesc.description.load import LoadedDescription
from pvdesc.emit import build, templating
from pvdesc.errors import DTError, ProveError, ToolError
from pvdesc.layout.allocate import Layout
from pvdesc.read import guest_output
from pvdesc.tools import proc, qemu

#: The VMM's devices, where QEMU virt has them (hw/arm/virt.c base_memmap).
GIC_DIST = Range(0x08000000, 0x10000)
GIC_REDIST_BASE = 0x080A0000
#: One GICv3 redistributor (RD_base + SGI_base frames) per vCPU.
GIC_REDIST_STRIDE = 0x20000
UART = Range(0x09000000, 0x1000)
#: The guest's kernel command line: earlycon on the VMM's 8250, kept after boot; /init from
#: the initramfs; ``panic=-1`` turns a panic into PSCI SYSTEM_RESET at once; writes to
#: /dev/kmsg are not rate-limited.
BOOTARGS = (
    f"earlycon=uart8250,mmio,{UART.base:#x} keep_bootcon rdinit=/init panic=-1 printk.devkmsg=on"
)
#: RAM above which the guest is not booted: its struct pages alone (1/64 of RAM) must fit,
#: with the kernel, in the emulated host's 2 GiB.
GUEST_RAM_MAX = 4 << 30
#: Seconds the VMM gives the guest before it gives up (a boot to power-off takes ~20-40 s).
GUEST_TIMEOUT = 240
#: arm64 boot protocol: the Image's base is 2 MiB aligned; the DTB lies in its own 2 MiB.
ALIGN_2M = 2 << 20
DTB_MAX = 2 << 20
#: Image header (booting.rst): code0/code1, text_offset, image_size, flags, res2-4, magic.
IMAGE_HEADER = struct.Struct("<IIQQQQQQI")
IMAGE_MAGIC = 0x644D5241  # "ARM\x64"
#: The tag the guest's init puts before each report line (``pvdesc-KIND: ...``).
TAG = "pvdesc-"
STOLEN_TIME_LINE = "arm-pv: using stolen time PV"
#: Kernel log lines that mean the guest crashed (arm64 die(), panic(), BUG()).
CRASH = re.compile(
    r"Unable to handle kernel|Internal error:|Kernel panic|BUG:|Oops|pc : |lr : |Call trace:"
)
#: At most this many crash lines are quoted.
MAX_CRASH_LINES = 8

_CONSOLE_TAGGED = re.compile(rf"^\[\s*\d+\.\d+\] {TAG}(?P<kind>\w+): ?(?P<text>.*)$")


@dataclass(frozen=True)
class Image:
    """An arm64 kernel ``Image``.

    Attributes:
        data: the uncompressed Image.
        text_offset: where it goes above a 2 MiB-aligned base.
        image_size: the memory it occupies from there (bss included).
        source: the file it came from.
    """

    data: bytes
    text_offset: int
    image_size: int
    source: str


def read_image(path: Path) -> Image:
    """The kernel at ``path`` as an arm64 ``Image`` (a gzip'd one is decompressed)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ToolError(f"not a gzip'd arm64 Image: {exc}", str(path)) from None
    if len(data) < IMAGE_HEADER.size:
        raise ToolError("not an arm64 Image: shorter than its 64-byte header", str(path))
    _c0, _c1, text_offset, image_size, _flags, _r2, _r3, _r4, magic = IMAGE_HEADER.unpack_from(data)
    if magic != IMAGE_MAGIC:
        raise ToolError(
            f"not an arm64 Image: magic {magic:#010x} at offset 56, not 0x644d5241 "
            "(ARM\\x64; Documentation/arch/arm64/booting.rst)",
            str(path),
        )
    if image_size == 0 or image_size < len(data) or text_offset % 4096:
        raise ToolError(
            f"arm64 Image header has text_offset {text_offset:#x}, image_size {image_size:#x} "
            f"for {len(data)} bytes: only kernels 3.17+ with a sane header can be placed",
            str(path),
        )
    return Image(data, text_offset, image_size, str(path))


@dataclass(frozen=True)
class Plan:
    """A Linux run of the VMM.

    Attributes:
        online: vCPUs 0..online-1.
        kernel: where the Image is loaded (PC).
        dtb: where the DTB is loaded (x0).
        initrd: the initramfs range.
        dtb_blob: the DTB (the VMM's tree merged with the description's memory).
        initrd_blob: the initramfs.
        kernel_path: the kernel file the Image came from.
    """

    online: int
    kernel: int
    dtb: int
    initrd: Range
    dtb_blob: bytes
    initrd_blob: bytes
    kernel_path: Path

    def config(self, base: str, paths: dict[str, str]) -> str:
        """The ``linux`` lines added to the first stage's VMM config ``base``."""
        lines = [
            f"online {self.online}",
            f"kernel {self.kernel:#x} {paths['kernel']}",
            f"dtb {self.dtb:#x} {paths['dtb']}",
            f"initrd {self.initrd.base:#x} {paths['initrd']}",
            f"uart {UART.base:#x}",
            f"gic {GIC_DIST.base:#x} {GIC_REDIST_BASE:#x}",
            f"timeout {GUEST_TIMEOUT}",
        ]
        return base + "\n".join(lines) + "\n"


def mpidr(vcpu: int) -> int:
    """KVM's MPIDR for a vCPU id: Aff0 = id % 16, Aff1 = id / 16 (arch/arm64/kvm/sys_regs.c
    ``reset_mpidr``); the DT's ``/cpus/cpu@N`` ``reg``."""
    return ((vcpu >> 4) & 0xFF) << 8 | (vcpu & 0xF)


def _cells(value: int) -> str:
    return f"{value >> 32:#x} {value & 0xFFFFFFFF:#x}"


def initramfs(busybox: bytes) -> bytes:
    """The guest's initramfs: busybox and ``templates/kvm-guest-init.sh.j2`` as ``/init``."""
    return guest.initramfs(busybox, templating.render("kvm-guest-init.sh.j2", tag=TAG))


def base_dtb(online: int, initrd: Range) -> bytes:
    """The VMM's own minimal tree (no ``/memory``), compiled with dtc."""
    redist = Range(GIC_REDIST_BASE, GIC_REDIST_STRIDE * online)
    dts = templating.render(
        "kvm-guest.dts.j2",
        bootargs=BOOTARGS,
        initrd=initrd,
        cpus=[mpidr(i) for i in range(online)],
        dist=GIC_DIST,
        redist=redist,
        uart=UART,
        cells=_cells,
    )
    dtc = proc.program("dtc", "install it with: apt-get install device-tree-compiler")
    with tempfile.TemporaryDirectory(prefix="pvdesc-vmmdt-") as tmp:
        src, out = Path(tmp) / "vmm.dts", Path(tmp) / "vmm.dtb"
        src.write_text(dts)
        res = proc.run_checked([dtc, "-q", "-I", "dts", "-O", "dtb", "-o", str(out), str(src)],
                               timeout=60)  # fmt: skip
        if res.returncode != 0 or not out.is_file():
            raise ToolError(f"cannot compile the VMM's tree: {proc.summary(res)}", "dtc")
        return out.read_bytes()


def devices(online: int) -> tuple[tuple[str, Range], ...]:
    """The VMM's MMIO windows."""
    return (
        ("GIC distributor", GIC_DIST),
        ("GIC redistributors", Range(GIC_REDIST_BASE, GIC_REDIST_STRIDE * online)),
        ("UART", UART),
    )


def plan(
    loaded: LoadedDescription, lay: Layout, image: Image, busybox: bytes
) -> tuple[Plan | None, str | None]:
    """Where everything goes, or ``(None, why)`` when this layout cannot be booted here."""
    desc = lay.description
    if desc.boot is not Boot.LINUX_DT:
        return None, (
            f"boot {desc.boot}: the project's VMM boots Linux directly with a DT, without "
            "firmware; the TCG prove boots UEFI layouts"
        )
    ram = sum(s.range.size for s in lay.memslots if s.purpose is Purpose.RAM)
    if ram > GUEST_RAM_MAX:
        return None, (
            f"{ram >> 20} MiB of RAM does not fit in the emulated host's 2 GiB as a guest "
            f"(limit {GUEST_RAM_MAX >> 20} MiB)"
        )
    online = desc.vcpus
    for name, r in devices(online):
        for s in lay.memslots:
            if s.range.overlaps(r):
                return None, f"the VMM's {name} {r} overlaps memslot {s.slot} {s.range}"
    # The lowest usable RAM range, minus the region's granules, takes kernel, DTB and initrd.
    usable = subtract(lay.usable_ram, [lay.region.granules()])
    initrd_blob = initramfs(busybox)
    for r in sorted(usable, key=lambda x: x.base):
        kernel = -(-r.base // ALIGN_2M) * ALIGN_2M + image.text_offset
        dtb = -(-(kernel + image.image_size) // ALIGN_2M) * ALIGN_2M
        initrd = Range(dtb + DTB_MAX, len(initrd_blob))
        if r.contains(Range(kernel, initrd.end - kernel)):
            break
    else:
        return None, "no usable RAM range holds the kernel, DTB and initrd"
    try:
        outputs = build.render_outputs(loaded, lay, base_dtb(online, initrd))
    except DTError as err:
        return None, f"pvdesc cannot merge the description into the VMM's tree: {err.message}"
    blob = next(o.data for o in outputs if o.name == f"{desc.name}.dtb")
    if len(blob) > DTB_MAX:
        raise ProveError(f"the guest DTB is {len(blob)} bytes, over 2 MiB", ("memory",))
    return Plan(online, kernel, dtb, initrd, blob, initrd_blob, Path(image.source)), None


# --- judging ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Steal:
    """One CPU's steal: ``/proc/stat`` at two moments, and KVM's structure at the end.

    Attributes:
        cpu: the CPU number.
        first: the 8th value of its ``cpuN`` line at init start (USER_HZ ticks).
        second: the same after 2 s of load on every CPU.
        kvm_stolen_ns: ``stolen_time`` in its structure when the guest powered off.
    """

    cpu: int
    first: int | None
    second: int | None
    kvm_stolen_ns: int | None


@dataclass(frozen=True)
class GuestReport:
    """What the Linux guest showed.

    Attributes:
        verdict: ``pass``, ``fail`` or ``not-run``.
        reason: why it did not run, or ``None``.
        stolen_time_line: the kernel's ``arm-pv: using stolen time PV`` line, or ``None``.
        iomem: the guest's ``/proc/iomem``.
        steal: per CPU.
        granules: the verdict on each 64 KiB granule of the region.
        checks: stolen time, memory, devicetree, crash/finish, stage 1.
        crash: the crash lines quoted, if it crashed.
        end: how the run ended (the VMM's ``guest ...`` line).
        console: the guest's console lines.
        vmm_lines: the VMM's own lines of the Linux run.
    """

    verdict: str
    reason: str | None = None
    stolen_time_line: str | None = None
    iomem: tuple[guest_output.IomemEntry, ...] = ()
    steal: tuple[Steal, ...] = ()
    granules: tuple[GranuleResult, ...] = ()
    checks: tuple[Observation, ...] = ()
    crash: tuple[str, ...] = ()
    end: str = ""
    console: tuple[str, ...] = ()
    vmm_lines: tuple[str, ...] = ()

    @property
    def failures(self) -> tuple[str, ...]:
        """One phrase per failed granule or check."""
        out = [
            f"granule {g.range} is {STATUS_TEXT[g.status]}" for g in self.granules if not g.passed
        ]
        out += [f"{c.name}: {c.message}" for c in self.checks if not c.passed]
        return tuple(out)


def _stat(lines: Sequence[str]) -> dict[int, int]:
    out = {}
    for line in lines:
        f = line.split()
        if len(f) > 8 and f[0].startswith("cpu") and f[0][3:].isdigit():
            out[int(f[0][3:])] = int(f[8])
    return out


def judge(
    lay: Layout, p: Plan, vmm_lines: Sequence[str], other: Sequence[str], stage1: bool
) -> GuestReport:
    """Judge the guest from its console (``guest: `` lines) and the VMM's own lines."""
    console = tuple(ln[len("guest: ") :] for ln in other if ln.startswith("guest: "))
    tagged: dict[str, list[str]] = {}
    for line in console:
        m = _CONSOLE_TAGGED.match(line)
        if m is not None:
            tagged.setdefault(m["kind"], []).append(m["text"])
    end = next(
        (ln for ln in vmm_lines if ln.startswith(("guest ", "error: "))),
        "the VMM printed no end line",
    )
    stolen = next((ln for ln in console if STOLEN_TIME_LINE in ln), None)
    iomem = guest_output.parse_iomem("\n".join(tagged.get("iomem", [])))
    dt_text = "\n".join([guest_output.DT_BEGIN, *tagged.get("dt", []), guest_output.DT_END, ""])
    dt = guest_output.guest_devicetree(dt_text)
    crash = tuple(ln for ln in console if CRASH.search(ln))[:MAX_CRASH_LINES]
    first, second = _stat(tagged.get("stat1", [])), _stat(tagged.get("stat2", []))
    kvm_ns = {}
    for ln in vmm_lines:
        if ln.startswith("steal vcpu "):
            f = ln.split()
            kvm_ns[int(f[2])] = int(f[-1])
    steal = tuple(Steal(i, first.get(i), second.get(i), kvm_ns.get(i)) for i in range(p.online))
    checks: list[Observation] = []
    finished = "end" in tagged and end == "guest system-event shutdown"
    if crash:
        checks.append(
            Observation(
                "crash",
                False,
                f"the guest kernel crashed ({crash[0]}); KVM's stolen-time writes land in memory "
                "the guest uses",
                tuple(Evidence("console", ln) for ln in crash),
            )
        )
    elif not finished:
        last = console[-1] if console else "no console output"
        checks.append(
            Observation(
                "finished",
                False,
                f"the guest did not complete its report and power off ({end}); last line: "
                f"{qemu.serial_line(last)}",
            )
        )
    checks.append(
        Observation(
            "stolen-time",
            stolen is not None,
            "the kernel enabled stolen time"
            if stolen
            else f"no '{STOLEN_TIME_LINE}' line: the kernel runs without stolen time",
            (Evidence("kernel log", stolen),) if stolen else (),
        )
    )
    expected = EXPECTED[lay.describe]
    # Without /proc/iomem (the guest never reached its init) there is nothing to judge a
    # granule by: the crash or "finished" check above carries the verdict.
    results = tuple(
        judging.judge_granule(g, expected, iomem, (), (), dt)
        for g in (judging.granules(lay.region) if iomem else ())
    )
    if iomem:
        ram = [e.range for e in iomem if e.depth == 0 and e.name == "System RAM"]
        got, want = merged(ram), merged(lay.usable_ram)
        checks.append(
            Observation(
                "memory",
                got == want,
                f"the guest's System RAM is {_ranges(got)}; the description's usable RAM is "
                f"{_ranges(want)}",
                tuple(
                    Evidence("/proc/iomem", guest_output.iomem_line(e))
                    for e in iomem
                    if e.depth == 0 and e.name == "System RAM"
                ),
            )
        )
        seen = merged(m.range for m in dt.memory)
        ours = merged(n.range for n in lay.memory_nodes)
        fdt = " ".join(tagged.get("fdt", []))
        sha = hashlib.sha256(p.dtb_blob).hexdigest()
        checks.append(
            Observation(
                "devicetree",
                seen == ours and sha in fdt,
                f"the guest's DT is the one pvdesc built (sha256 {sha[:16]}...) with /memory "
                f"{_ranges(seen)}"
                if seen == ours and sha in fdt
                else f"the guest's DT (sha256 {fdt[:16] or 'unknown'}) has /memory "
                f"{_ranges(seen)}, not pvdesc's {_ranges(ours)} (sha256 {sha[:16]})",
                tuple(Evidence("devicetree", ln) for ln in dt.lines),
            )
        )
    checks.append(
        Observation(
            "stage-1",
            stage1,
            "KVM answered PV_TIME_ST as configured on every vCPU"
            if stage1
            else "the first stage (KVM's PV_TIME_ST answers) failed",
        )
    )
    ok = all(g.passed for g in results) and all(c.passed for c in checks)
    return GuestReport(
        verdict="pass" if ok else "fail",
        stolen_time_line=stolen,
        iomem=iomem,
        steal=steal,
        granules=results,
        checks=tuple(checks),
        crash=crash,
        end=end,
        console=console,
        vmm_lines=tuple(vmm_lines),
    )


def _ranges(rs: Sequence[Range]) -> str:
    return ", ".join(str(r) for r in rs) or "none"


def to_json(rep: GuestReport) -> dict[str, Any]:
    """The ``"guest"`` object of the ``"kvm"`` JSON."""
    evidence = [
        {"source": e.source, "line": e.line}
        for g in rep.granules
        for e in g.evidence
    ]  # fmt: skip
    evidence += [{"source": e.source, "line": e.line} for c in rep.checks for e in c.evidence]
    return {
        "verdict": rep.verdict,
        "reason": rep.reason,
        "stolen_time_line": rep.stolen_time_line,
        "iomem": [guest_output.iomem_line(e) for e in rep.iomem],
        "steal": [
            {"cpu": s.cpu, "first": s.first, "second": s.second, "kvm_stolen_ns": s.kvm_stolen_ns}
            for s in rep.steal
        ],
        "granules": [
            {
                "range": [g.range.base, g.range.end],
                "status": str(g.status),
                "verdict": "pass" if g.passed else "fail",
            }
            for g in rep.granules
        ],
        "checks": [
            {"name": c.name, "verdict": "pass" if c.passed else "fail", "message": c.message}
            for c in rep.checks
        ],
        "crash": list(rep.crash),
        "end": rep.end,
        "evidence": evidence,
        "failures": list(rep.failures),
    }
