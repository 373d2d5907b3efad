"""prove --kvm, stage two: a real arm64 Linux guest under real KVM, booted with pvdesc's tables.

One emulated host boot runs every scenario (``kvm.prove_many``): the probe,
then the same VMM booting Debian's kernel as a KVM guest with the description's memslots,
IPAs and devicetree.  The tests read the guest's own lines (its console, ``/proc/iomem``,
``/proc/stat``, the DT it saw, KVM's structures at power-off), not only the verdict.  The
negative controls are built with the library (``pvdesc build`` refuses them): the region
inside RAM that the guest is told it may use, at the top of RAM and lower down.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import EXAMPLES, ROOT
from test_prove_kvm import INSIDE_RAM, region_in_ram

from pvdesc.commands.prove import guest as prove_guest
from pvdesc.commands.prove import kvm as kvmprove
from pvdesc.commands.prove import kvm_guest as kvmguest
from pvdesc.commands.prove import kvm_guest_plan, kvm_job, kvm_judge
from pvdesc.commands.prove import verdict as prove_verdict
from pvdesc.core.ranges import Range
from pvdesc.description.load import LoadedDescription, load
from pvdesc.errors import LayoutError, ToolError
from pvdesc.layout import allocate as layout
from pvdesc.layout.allocate import Layout
from pvdesc.read import guest_output

pytestmark = pytest.mark.boot

TIMEOUT = 1200.0
DATA = ROOT / "tests" / "data" / "prove"
SCENARIOS = {
    "reserved": EXAMPLES / "linux-carve-reserved.yaml",
    "exclude": DATA / "linux-carve-exclude.yaml",
    "hole-4cpu": DATA / "linux-hole-kvm4.yaml",
}
#: The survivable placement: the region 512 MiB into the 1 GiB of RAM, far from the kernel
#: (loaded at the bottom) and from the top, where memblock allocates early.
LOWER = 0x60000000


def lower_in_ram() -> tuple[LoadedDescription, Layout]:
    loaded, top = region_in_ram(INSIDE_RAM)
    lower = top._replace(region=Range(LOWER, top.region.size))
    with pytest.raises(LayoutError):
        layout.verify(lower)
    return loaded, lower


@pytest.fixture(scope="module")
def reports() -> dict[str, kvm_judge.KvmReport]:
    parts = prove_guest.guest_parts()
    items: list[kvm_job.Job] = []
    for path in SCENARIOS.values():
        loaded = load(path)
        items.append(kvm_job.make_job(loaded, layout.allocate(loaded.description), linux=parts))
    items.append(kvm_job.make_job(*region_in_ram(INSIDE_RAM), linux=parts))
    items.append(kvm_job.make_job(*lower_in_ram(), linux=parts))
    names = [*SCENARIOS, "nc-top", "nc-lower"]
    done = kvmprove.prove_many(items, parts, TIMEOUT)
    return dict(zip(names, done, strict=True))


def guest_alone(rep: kvm_judge.KvmReport) -> kvmguest.GuestReport:
    """The guest judged again on its own lines, as if stage one had passed: what fails it then
    is what the guest itself showed."""
    g = guest(rep)
    assert rep.job.guest is not None
    other = [f"guest: {ln}" for ln in g.console]
    return kvmguest.judge(rep.layout, rep.job.guest, g.vmm_lines, other, True)


def touching(rep: kvmguest.GuestReport, r: Range) -> list[str]:
    g = r.granules()
    return [guest_output.iomem_line(e) for e in rep.iomem if e.range.overlaps(g)]


def guest(rep: kvm_judge.KvmReport) -> kvmguest.GuestReport:
    assert rep.no_result is None, rep.no_result
    assert rep.guest is not None
    return rep.guest


# --- positive: the guest takes the IPA from KVM and never counts the region as RAM ----------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_guest_enables_stolen_time_and_powers_off(
    reports: dict[str, kvm_judge.KvmReport], name: str
) -> None:
    rep = reports[name]
    g = guest(rep)
    assert g.stolen_time_line is not None and g.stolen_time_line.endswith(
        "arm-pv: using stolen time PV"
    )
    assert g.end == "guest system-event shutdown"  # PSCI SYSTEM_OFF from busybox poweroff -f
    assert g.crash == ()
    # The DT the guest saw is the one pvdesc built (merged into the VMM's tree, as --into).
    assert {c.name: c.passed for c in g.checks} == {
        "stolen-time": True, "memory": True, "devicetree": True, "stage-1": True,
    }  # fmt: skip
    ram = [e.range for e in g.iomem if e.depth == 0 and e.name == "System RAM"]
    assert ram and all(any(u.contains(r) for u in rep.layout.usable_ram) for r in ram)
    assert g.verdict == "pass" and rep.passed, rep.failures
    assert kvmprove.to_text(rep).endswith(
        "a Linux guest under KVM enabled stolen time and never counted the region as RAM\n"
    )


def test_reserved_memory_is_reserved_inside_ram(reports: dict[str, kvm_judge.KvmReport]) -> None:
    rep = reports["reserved"]
    g = guest(rep)
    region = rep.layout.region
    assert region == Range(0xBFFF0000, 0x10000)
    assert touching(g, region) == ["bfff0000-bfffffff : reserved"]
    top = [e for e in g.iomem if e.depth == 0]
    assert any(e.name == "System RAM" and e.range.end == region.base for e in top)
    # Inside the one /memory node the guest was given (its DT), and inside the RAM memslot.
    assert [n.range for n in rep.layout.memory_nodes] == [Range(0x40000000, 2 << 30)]
    assert [s.status for s in g.granules] == [prove_verdict.Status.RESERVED]


@pytest.mark.parametrize("name", ["exclude", "hole-4cpu"])
def test_no_system_ram_over_the_region(reports: dict[str, kvm_judge.KvmReport], name: str) -> None:
    g = guest(reports[name])
    assert touching(g, reports[name].layout.region) == []
    assert [s.status for s in g.granules] == [prove_verdict.Status.ABSENT]


def test_every_online_vcpu_accounts_steal(reports: dict[str, kvm_judge.KvmReport]) -> None:
    rep = reports["hole-4cpu"]
    g = guest(rep)
    assert any("smp: Brought up 1 node, 4 CPUs" in ln for ln in g.console)
    assert [s.cpu for s in g.steal] == [0, 1, 2, 3]
    for s in g.steal:
        # KVM accounted run delay into this vCPU's own structure, and the guest CPU read it:
        # its /proc/stat steal is nonzero and grew while every CPU was loaded.
        assert s.kvm_stolen_ns is not None and s.kvm_stolen_ns > 0, s
        assert s.first is not None and s.second is not None and s.second > 0, s
        assert s.second >= s.first, s
    steal = [ln for ln in rep.guest.console if "pvdesc-stat2: cpu3 " in ln]  # type: ignore[union-attr]
    assert len(steal) == 1


# --- negative controls: what pvdesc prevents -------------------------------------------------


def test_region_at_top_of_ram_crashes_the_guest_and_fails(
    reports: dict[str, kvm_judge.KvmReport],
) -> None:
    rep = reports["nc-top"]
    # KVM accepted the IPAs and answered with them: stage 1 finds them inside usable RAM.
    assert [a.reported_ipa for a in rep.vcpus] == list(rep.layout.vcpu_ipas)
    assert any(f.code == "ipa-in-ram" for f in rep.findings)
    g = guest(rep)
    assert g.verdict == "fail" and not rep.passed
    # The crash is quoted, not read as "no result".
    assert g.crash, g.console[-20:]
    assert any("Unable to handle kernel" in ln or "Kernel panic" in ln for ln in g.crash)
    (crash,) = [c for c in g.checks if c.name == "crash"]
    assert not crash.passed and crash.evidence
    assert any(x.startswith("guest: crash: the guest kernel crashed") for x in rep.failures)
    # The crash alone fails the guest.
    alone = guest_alone(rep)
    assert alone.verdict == "fail"
    assert [c.name for c in alone.checks if not c.passed] == ["crash"]


def test_region_lower_in_ram_survives_but_is_system_ram(
    reports: dict[str, kvm_judge.KvmReport],
) -> None:
    rep = reports["nc-lower"]
    g = guest(rep)
    ipa = rep.vcpus[0].reported_ipa
    assert ipa == LOWER
    assert g.end == "guest system-event shutdown" and g.crash == ()
    # Its own /proc/iomem lists the reported IPA as System RAM.
    holders = [e for e in g.iomem if e.name == "System RAM" and e.range.contains_addr(ipa)]
    assert holders and holders[0].depth == 0
    assert [s.status for s in g.granules] == [prove_verdict.Status.SYSTEM_RAM]
    assert g.verdict == "fail" and not rep.passed
    assert any(x.startswith("guest: granule 0x60000000-0x6000ffff is System RAM")
               for x in rep.failures)  # fmt: skip
    # Its /proc/iomem alone fails the guest (not only stage one's ipa-in-ram).
    alone = guest_alone(rep)
    assert alone.verdict == "fail"
    assert alone.failures == ("granule 0x60000000-0x6000ffff is System RAM",)


# --- the kernel image, and what cannot be booted here ---------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_image_takes_the_arm64_header(tmp_path: Path, gz: bool) -> None:
    import gzip

    img = kvm_guest_plan.read_image(prove_guest.guest_parts().kernel)
    assert img.text_offset == 0 and img.image_size >= len(img.data)
    path = tmp_path / "k"
    path.write_bytes(gzip.compress(img.data[: 4 << 20], 1) if gz else img.data[: 4 << 20])
    again = kvm_guest_plan.read_image(path)
    assert (again.text_offset, again.image_size) == (img.text_offset, img.image_size)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 4096)
    with pytest.raises(ToolError, match=r"not an arm64 Image: magic 0x00000000"):
        kvm_guest_plan.read_image(bad)


def test_uefi_and_huge_layouts_are_not_run() -> None:
    parts = prove_guest.guest_parts()
    img = kvm_guest_plan.read_image(parts.kernel)
    for name, why in [("uefi-carve-exclude", "boot uefi-dt"), ("max-vcpus-512", "MiB of RAM")]:
        loaded = load(EXAMPLES / f"{name}.yaml")
        p, reason = kvm_guest_plan.plan(loaded, layout.allocate(loaded.description), img, b"")
        assert p is None and reason is not None and why in reason
