"""One ``prove --kvm`` job: a build's outputs turned into the VMM's config and binary,
with the Linux second stage planned where asked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pvdesc import kvm
from pvdesc.commands.prove import guest, kvm_guest_plan
from pvdesc.commands.prove.kvm_vmm import Header, vmm_binary
from pvdesc.core.model import Purpose
from pvdesc.core.ranges import Range
from pvdesc.description.load import LoadedDescription
from pvdesc.emit import build
from pvdesc.errors import ProveError, PvdescError
from pvdesc.layout.allocate import Layout

#: A page of the payload; the report window (no memslot) is one page too.
PAGE = 0x1000


class Job(NamedTuple):
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
    guest: kvm_guest_plan.Plan | None = None
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
            plan, reason = kvm_guest_plan.plan(
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


_IMAGES: dict[tuple[str, int, int], kvm_guest_plan.Image] = {}


def kernel_image(path: Path) -> kvm_guest_plan.Image:
    """:func:`pvdesc.commands.prove.kvm_guest_plan.read_image`, once per file version."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _IMAGES:
        _IMAGES.clear()
        _IMAGES[key] = kvm_guest_plan.read_image(path)
    return _IMAGES[key]
