"""Stage two of ``prove --kvm``: a real Linux guest under real KVM, booted with pvdesc's tables.

pvdesc's VMM (``vmm/pvdesc-vmm.c``, ``linux`` mode) boots Debian's arm64 kernel as a KVM
guest inside the emulated host, with the same memslots and per-vCPU ``PVTIME_IPA`` as the
first stage, the description's online vCPUs (PSCI 0.2; secondaries through in-kernel PSCI),
an in-kernel vGICv3, the arch timer and a transmit-only 8250 UART.
:mod:`pvdesc.commands.prove.kvm_guest_plan` prepares that run; this module judges it:

- :func:`judge`: what the guest printed (its init writes to ``/dev/kmsg``, which reaches
  the VMM's UART through ``earlycon``/``keep_bootcon``): the kernel's ``arm-pv: using
  stolen time PV`` line, ``/proc/iomem``, each CPU's steal at two moments, the DT it saw,
  and any crash.  Pass only when stolen time is enabled, no ``System RAM`` covers any
  64 KiB granule of the region, the guest's RAM equals the description's usable RAM, and
  the first stage passed.  A guest that crashes or hangs is a fail, quoting it.

A crash or hang is *explained* by the layout when the region lies in RAM the guest was
told it may use (KVM's writes land in its memory).  One the layout does not explain
(:attr:`GuestReport.unexplained`) is booted again once by
:func:`pvdesc.commands.prove.kvm.prove_many`: the nested KVM host on an emulated CPU has,
twice in about 90 guest boots, refused a secondary CPU (``CPU1: failed to boot: -22``,
then a hang) or crashed one at bring-up, with the region in its own memslot outside RAM.
The second boot's report stands, and the first's failures are kept (``earlier``); a flaw
in pvdesc's model would fail the second boot too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from pvdesc.commands.prove import judging
from pvdesc.commands.prove.judging import ranges_text
from pvdesc.commands.prove.kvm_guest_plan import TAG, Plan
from pvdesc.commands.prove.verdict import (
    EXPECTED,
    STATUS_TEXT,
    Evidence,
    GranuleResult,
    Observation,
)
from pvdesc.core.ranges import merged
from pvdesc.layout.allocate import Layout
from pvdesc.read import guest_output
from pvdesc.tools import qemu

STOLEN_TIME_LINE = "arm-pv: using stolen time PV"
#: Kernel log lines that mean the guest crashed (arm64 die(), panic(), BUG()).
CRASH = re.compile(
    r"Unable to handle kernel|Internal error:|Kernel panic|BUG:|Oops|pc : |lr : |Call trace:"
)
#: At most this many crash lines are quoted.
MAX_CRASH_LINES = 8


# --- judging ----------------------------------------------------------------------------------


class Steal(NamedTuple):
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


class GuestReport(NamedTuple):
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
        unexplained: it crashed or hung although stage 1 passed and the region lies
            outside the RAM the guest was told it may use (module doc).
        earlier: the failures of an earlier boot that ended so, booted again.
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
    unexplained: bool = False
    earlier: tuple[str, ...] = ()

    @property
    def failures(self) -> tuple[str, ...]:
        """One phrase per failed granule or check."""
        out = [
            f"granule {g.range} is {STATUS_TEXT[g.status]}" for g in self.granules if not g.passed
        ]
        out += [f"{c.name}: {c.message}" for c in self.checks if not c.passed]
        return tuple(out)


def judge(
    lay: Layout, p: Plan, vmm_lines: Sequence[str], other: Sequence[str], stage1: bool
) -> GuestReport:
    """Judge the guest from its console (``guest: `` lines) and the VMM's own lines."""
    console = tuple(ln[len("guest: ") :] for ln in other if ln.startswith("guest: "))
    tagged = guest_output.tagged(console, TAG)
    end = next(
        (ln for ln in vmm_lines if ln.startswith(("guest ", "error: "))),
        "the VMM printed no end line",
    )
    stolen = next((ln for ln in console if STOLEN_TIME_LINE in ln), None)
    iomem = guest_output.parse_iomem("\n".join(tagged.get("iomem", [])))
    dt = guest_output.parse_devicetree("\n".join(tagged.get("dt", [])))
    crash = tuple(ln for ln in console if CRASH.search(ln))[:MAX_CRASH_LINES]
    first = guest_output.steal_ticks(tagged.get("stat1", []))
    second = guest_output.steal_ticks(tagged.get("stat2", []))
    kvm_ns = {}
    for ln in vmm_lines:
        if ln.startswith("steal vcpu "):
            f = ln.split()
            kvm_ns[int(f[2])] = int(f[-1])
    steal = tuple(Steal(i, first.get(i), second.get(i), kvm_ns.get(i)) for i in range(p.online))
    checks: list[Observation] = []
    finished = "end" in tagged and end == "guest system-event shutdown"
    in_ram = any(r.overlaps(lay.region) for r in lay.usable_ram)
    if crash:
        checks.append(
            Observation(
                "crash",
                False,
                f"the guest kernel crashed ({crash[0]}); "
                + (
                    "the region lies in RAM the guest was told it may use, where KVM's "
                    "stolen-time writes land"
                    if in_ram
                    else "the region lies outside the RAM the guest was told it may use, "
                    "so the layout does not explain it"
                ),
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
                f"the guest's System RAM is {ranges_text(got)}; the description's usable RAM is "
                f"{ranges_text(want)}",
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
                f"{ranges_text(seen)}"
                if seen == ours and sha in fdt
                else f"the guest's DT (sha256 {fdt[:16] or 'unknown'}) has /memory "
                f"{ranges_text(seen)}, not pvdesc's {ranges_text(ours)} (sha256 {sha[:16]})",
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
    broke = bool(crash) or not finished
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
        unexplained=broke and stage1 and not in_ram and all(g.passed for g in results),
    )


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
        "earlier_boot_failures": list(rep.earlier),
    }
