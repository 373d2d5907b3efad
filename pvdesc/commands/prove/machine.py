"""Plan the QEMU virt machine whose RAM is exactly a layout's ``/memory`` nodes (TCG proof)."""

from __future__ import annotations

from pvdesc.core.model import Boot, Vmm
from pvdesc.core.ranges import Range
from pvdesc.emit import acpi
from pvdesc.errors import ProveError
from pvdesc.layout.allocate import Layout
from pvdesc.tools import qemu

#: VMM profiles whose map QEMU virt reproduces: its own, and pvdesc's generic one.
BOOTABLE_VMMS = (Vmm.GENERIC_KVM, Vmm.QEMU_VIRT)
#: The kernel command line per boot mode.  ``panic=-1`` + QEMU ``-no-reboot``: a
#: panicking guest exits at once instead of hanging until the timeout.  ``efi=debug``
#: prints the UEFI memory map (drivers/firmware/efi/efi.c ``efi_print_memmap``).
APPEND = {
    Boot.LINUX_DT: "console=ttyAMA0 panic=-1 acpi=off",
    Boot.UEFI_DT: "console=ttyAMA0 panic=-1 acpi=off efi=debug",
    Boot.UEFI_ACPI: "console=ttyAMA0 panic=-1 acpi=force efi=debug",
}


def plan_machine(lay: Layout) -> qemu.Machine:
    """The QEMU virt machine whose RAM is exactly the layout's ``/memory`` nodes.

    ``-m`` is their total; with NUMA, each node becomes a ``memory-backend-ram``
    and a ``-numa node`` in address order (hw/arm/boot.c lays them end to end from
    0x40000000), with the vCPUs split as pvdesc's SRAT splits them
    (:func:`pvdesc.emit.acpi.vcpu_node`).  Raises :class:`ProveError` (with a key path
    into the description) when QEMU virt cannot represent the layout.
    """
    desc = lay.description
    if desc.vmm not in BOOTABLE_VMMS:
        raise ProveError(
            f"prove boots QEMU's virt machine, which cannot reproduce {desc.vmm}'s memory map "
            "(RAM base, MMIO windows, fixed region); prove takes vmm generic-kvm or qemu-virt",
            ("vmm",),
        )
    per_node: list[tuple[int | None, int]] = []
    cursor = qemu.QEMU_VIRT_RAM_BASE
    for node in sorted(lay.memory_nodes, key=lambda n: n.range.base):
        where = (*node.bank.path, "base")
        if node.range.base != cursor:
            if cursor == qemu.QEMU_VIRT_RAM_BASE:
                raise ProveError(
                    f"/memory starts at {node.range.base:#x}, but QEMU virt's RAM starts at "
                    f"{qemu.QEMU_VIRT_RAM_BASE:#x} (hw/arm/virt.c VIRT_MEM), so prove cannot "
                    "boot this layout",
                    where,
                )
            gap = Range(cursor, max(node.range.base - cursor, 1))
            what = " (the stolen-time region cut out of RAM)" if gap.overlaps(lay.region) else ""
            raise ProveError(
                f"/memory range {node.range} follows a gap at {gap}{what}, but QEMU virt makes "
                "RAM one range from 0x40000000 with NUMA nodes end to end (hw/arm/boot.c), so "
                "prove cannot boot it; only a region at the top of RAM or outside RAM can be "
                "proven",
                where,
            )
        if per_node and per_node[-1][0] == node.numa_node:
            per_node[-1] = (node.numa_node, per_node[-1][1] + node.range.size)
        else:
            per_node.append((node.numa_node, node.range.size))
        cursor = node.range.end
    shape: list[str] = []
    if desc.numa:
        ids = [n for n, _ in per_node]
        if ids != list(range(len(ids))):
            raise ProveError(
                f"NUMA nodes in address order are {ids}, but QEMU virt numbers them 0, 1, ... "
                "in address order (hw/arm/boot.c), so prove cannot boot this layout",
                ("memory",),
            )
        for i, size in per_node:
            shape += ["-object", f"memory-backend-ram,id=pvdesc-ram{i},size={_size(size)}"]
            cpus = [v for v in range(desc.max_vcpus) if acpi.vcpu_node(desc, v) == i]
            spec = f"node,nodeid={i},memdev=pvdesc-ram{i}"
            if cpus:
                spec += f",cpus={cpus[0]}-{cpus[-1]}"
            shape += ["-numa", spec]
    total = sum(size for _, size in per_node)
    options = "virt,gic-version=3" + (",acpi=off" if desc.boot is Boot.UEFI_DT else "")
    return qemu.Machine(
        memory=_checked_size(total),
        smp=desc.vcpus,
        maxcpus=desc.max_vcpus,
        uefi=desc.boot.uefi,
        append=APPEND[desc.boot],
        machine=options,
        shape=tuple(shape),
    )


def _checked_size(size: int) -> int:
    if size % qemu.QEMU_RAM_ALIGN:
        raise ProveError(
            f"RAM of {size:#x} bytes is not a multiple of 8 KiB, and QEMU would round it up",
            ("memory",),
        )
    return size


def _size(size: int) -> str:
    return qemu.qemu_size(_checked_size(size))
