"""``pvdesc prove``: boot a real arm64 guest with a description's outputs and read what it believes.

The outputs are built (``pvdesc build --into``) in a temporary directory, then
Debian's arm64 kernel boots under ``qemu-system-aarch64`` (TCG, ``-cpu max``,
``virt``) the way the description says (docs/boot-evidence.md §3-5):

- ``linux-dt``: QEMU loads the kernel and hands it the DTB directly;
- ``uefi-dt``: EDK2 (``qemu-efi-aarch64``) boots it with the DT (``virt,acpi=off``);
- ``uefi-acpi``: EDK2 boots it with ACPI (``acpi=force``); the SSDT travels in
  the initrd (Linux ``initrd_table_override.rst``).

**Why the DTB is QEMU's own.**  QEMU rewrites every ``/memory`` node of the DTB it
is given from ``-m`` and ``-numa`` (hw/arm/boot.c ``arm_load_dtb``), and pvdesc's
own tree holds only memory nodes.  So the bootable DTB is QEMU's dump
(``-machine virt,dumpdtb=``) patched by :mod:`pvdesc.emit.patch`, and QEMU's RAM is
derived from the layout's ``/memory`` nodes (:func:`.machine.plan_machine`): ``-m`` is their
total and, with NUMA, one ``memory-backend-ram`` per node.  QEMU virt lays RAM out
as one range from 0x40000000, nodes end to end, so a layout is bootable only if its
``/memory`` nodes are exactly that; anything else is refused (:class:`ProveError`).
A region carved from the top of RAM and excluded is then *outside* QEMU's RAM: the
guest gets exactly the ``/memory`` the description states, but the region is not
backed here the way a real VMM's RAM memslot backs it (see :func:`.report.scope`).

**What is read back.**  The guest's ``/init`` prints ``/proc/iomem`` and the
``/memory`` and ``/reserved-memory`` properties of the DT the kernel saw; the
kernel log (with ``efi=debug``: the UEFI memory map) comes over the serial console
(read by :mod:`pvdesc.read.guest_output`, judged by :mod:`.judging`).
Each 64 KiB granule of the region gets a :class:`.verdict.Status`: ``System RAM`` or RAM in
the EFI memory map fails; ``reserved`` (memblock nomap), a ``pnp`` claim, or
nothing at all passes.  The guest's RAM (``/proc/iomem`` System RAM + nomap
``reserved``, the DT memory nodes, the EFI map) must equal the layout's ``/memory``
nodes, so a mismatch is reported rather than silently passed.
"""

from __future__ import annotations

from pathlib import Path

from pvdesc.commands.prove import guest
from pvdesc.commands.prove.judging import judge, ranges_text
from pvdesc.commands.prove.machine import plan_machine
from pvdesc.commands.prove.verdict import ProveReport
from pvdesc.core.model import Describe
from pvdesc.description.load import LoadedDescription, load
from pvdesc.emit import build
from pvdesc.errors import DTError, ProveError, PvdescError
from pvdesc.layout import allocate as layout
from pvdesc.layout import beliefs
from pvdesc.layout.allocate import Layout
from pvdesc.read import dtb
from pvdesc.tools import qemu, signals

#: Seconds before QEMU's process group is killed (one boot takes 10-30 s under TCG).
DEFAULT_TIMEOUT = 120.0


def prove(
    loaded: LoadedDescription,
    lay: Layout,
    parts: guest.GuestParts,
    timeout: float = DEFAULT_TIMEOUT,
) -> ProveReport:
    """Build the outputs for ``lay`` into a temporary directory, boot them, judge the guest.

    ``lay`` need not come from :func:`pvdesc.layout.allocate.allocate`: the negative-control
    tests build unsafe layouts by hand.  Errors with key paths name ``loaded``'s file.
    """
    try:
        return _prove(loaded, lay, parts, timeout)
    except PvdescError as err:
        raise loaded.source.resolve(err) from None


def _prove(
    loaded: LoadedDescription, lay: Layout, parts: guest.GuestParts, timeout: float
) -> ProveReport:
    if not timeout > 0:
        raise ProveError(f"the timeout must be positive, not {timeout:g}", "--timeout")
    machine = plan_machine(lay)
    base = qemu.dump_dtb(machine)
    # RAM as the description's boot consumer reads QEMU's tree, and as it reads the layout.
    qemu_ram = list(
        beliefs.believe(dtb.parse(base, "QEMU virt dumpdtb"), lay.description.boot).ram_ranges
    )
    ours = list(layout.belief(lay).ram_ranges)
    if qemu_ram != ours:
        raise ProveError(
            f"QEMU made RAM {ranges_text(qemu_ram)} for {' '.join(qemu.machine_args(machine))}, "
            f"not the description's /memory {ranges_text(ours)}",
            ("memory",),
        )
    name = lay.description.name
    with signals.scratch("pvdesc-prove-") as tmp:
        try:
            outputs = build.render_outputs(loaded, lay, base, tmp)
        except DTError as err:
            raise ProveError(
                f"QEMU virt's own devicetree cannot host this layout ({err.message}); prove "
                "boots QEMU virt, so the region must avoid its devices",
                ("stolen_time",),
            ) from None
        # QEMU reads only the DTB from disk; the SSDT goes into the initrd from memory.
        files = {o.name: o for o in outputs}
        build.write_outputs(Path(tmp), [files[f"{name}.dtb"]])
        tables: dict[str, bytes] = {}
        if lay.describe is Describe.ACPI:
            tables["ssdt.aml"] = files[f"{name}.ssdt.aml"].data
        initrd = guest.acpi_table_archive(tables) if tables else b""
        initrd += guest.initramfs(parts.busybox.read_bytes())
        machine = machine._replace(dtb=Path(tmp) / f"{name}.dtb")
        result = guest.boot(machine, parts, initrd, timeout)
    return judge(lay, result, loaded.source.file, parts)


def prove_file(
    path: str | Path, kernel: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT
) -> ProveReport:
    """``pvdesc prove``: load, allocate, check QEMU can host it, find the parts, boot."""
    loaded = load(path)
    try:
        lay = layout.allocate(loaded.description)
        plan_machine(lay)
    except PvdescError as err:
        raise loaded.source.resolve(err) from None
    return prove(loaded, lay, guest.guest_parts(kernel), timeout)
