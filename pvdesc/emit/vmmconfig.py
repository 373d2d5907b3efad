"""Per-VMM outputs: command lines (QEMU, kvmtool, crosvm) and generic-KVM C/Rust sources.

Each VMM's values come from its profile (:mod:`pvdesc.description.profiles`); the text comes
from Jinja templates in ``templates/``.  Pure: returns (file name, kind, bytes).
The ``pvdesc.hypervisor/1`` JSON keeps its documented shape; command lines live
in their own files (``<name>.qemu.args``, ``<name>.lkvm.args``, ``<name>.crosvm.args``).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from pvdesc import __version__, kvm
from pvdesc.core.model import Vmm
from pvdesc.description.vmms.kvmtool import KVMTOOL_RAM_BASE
from pvdesc.emit import templating
from pvdesc.layout.allocate import Layout

#: (file name, kind, bytes): what :mod:`pvdesc.emit.build` wraps into outputs.
VmmOutput = tuple[str, str, bytes]


def size_arg(size: int) -> str:
    """A size with the largest exact binary suffix QEMU/kvmtool accept (``2G``, ``1536M``)."""
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{suffix}"
    return str(size)


def qemu_args(lay: Layout, dtb_path: str | None = None) -> list[str]:
    """The ``qemu-system-aarch64`` command line for a qemu-virt layout.

    ``-cpu host,kvm-steal-time=on`` (target/arm/kvm.c, docs/vmm-layouts.md §1) makes QEMU
    fail rather than silently run without stolen time; ``gic-version=3`` so the GIC
    windows are the profile's (GICv2 allows only 8 vCPUs).  ``-smp N,maxcpus=M``
    sizes QEMU's region (``max_cpus * 64``).  With NUMA each bank becomes a
    ``memory-backend-ram`` and a ``-numa node`` in bank order, which is the order
    hw/arm/boot.c lays nodes out from 1 GiB.
    """
    desc = lay.description
    total = sum(b.range.size for b in desc.memory)
    args = [
        "qemu-system-aarch64",
        "-accel",
        "kvm",
        "-machine",
        "virt,gic-version=3",
        "-cpu",
        "host,kvm-steal-time=on",
        "-smp",
        f"{desc.vcpus},maxcpus={desc.max_vcpus}",
        "-m",
        size_arg(total),
    ]
    if desc.numa:
        for bank in desc.memory:
            mem_id = f"ram-node{bank.numa_node}"
            args += ["-object", f"memory-backend-ram,id={mem_id},size={size_arg(bank.range.size)}"]
            args += ["-numa", f"node,nodeid={bank.numa_node},memdev={mem_id}"]
    if dtb_path is not None:
        args += ["-dtb", dtb_path]
    return args


def lkvm_args(lay: Layout) -> list[str]:
    """``lkvm run`` arguments for a kvmtool layout (kernel/disk left to the user).

    ``--mem`` is in MiB; a RAM base other than 0x80000000 is written ``SIZE@ADDR``
    (builtin-run.c ``mem_parser``).  ``--irqchip gicv3`` matches the profile's GIC.
    """
    desc = lay.description
    bank = desc.memory[0].range
    mem = str(bank.size >> 20) if bank.size % (1 << 20) == 0 else size_arg(bank.size)
    if bank.base != KVMTOOL_RAM_BASE:
        mem = f"{size_arg(bank.size)}@{bank.base:#x}"
    return ["lkvm", "run", "--cpus", str(desc.vcpus), "--mem", mem, "--irqchip", "gicv3"]


def crosvm_args(lay: Layout) -> list[str]:
    """``crosvm run`` arguments for a crosvm layout (``--mem`` in MiB; kernel left to the user)."""
    desc = lay.description
    size = desc.memory[0].range.size
    return ["crosvm", "run", "--cpus", str(desc.vcpus), "--mem", str(-(-size // (1 << 20)))]


def _args_file(
    lay: Layout, source: str, suffix: str, title: str, note: str, argv: Sequence[str]
) -> VmmOutput:
    desc = lay.description
    text = templating.render(
        "vmm.args.j2",
        desc=desc,
        layout=lay,
        version=__version__,
        source=source,
        title=title,
        note=note,
        command=shlex.join(argv),
    )
    return (f"{desc.name}.{suffix}.args", f"{suffix}-args", text.encode())


def _c_name(name: str) -> str:
    return name.replace("-", "_")


def outputs(lay: Layout, source: str, dtb_path: str | None = None) -> tuple[VmmOutput, ...]:
    """The VMM-specific files for a layout."""
    desc = lay.description
    if desc.vmm is Vmm.QEMU_VIRT:
        note = (
            "QEMU places it itself at VIRT_PVTIME (no option moves it)."
            if dtb_path is None
            else "QEMU places it itself; -dtb is pvdesc's patched copy of QEMU's DTB."
        )
        return (_args_file(lay, source, "qemu", "QEMU", note, qemu_args(lay, dtb_path)),)
    if desc.vmm is Vmm.KVMTOOL:
        note = "kvmtool places it itself at ARM_PVTIME_BASE (--no-pvtime turns it off)."
        return (_args_file(lay, source, "lkvm", "kvmtool", note, lkvm_args(lay)),)
    if desc.vmm is Vmm.CROSVM:
        note = "crosvm places it itself at AARCH64_PVTIME_IPA_START (no option)."
        return (_args_file(lay, source, "crosvm", "crosvm", note, crosvm_args(lay)),)
    if desc.vmm is Vmm.GENERIC_KVM:
        lower = _c_name(desc.name)
        ctx = {
            "desc": desc,
            "layout": lay,
            "version": __version__,
            "source": source,
            "kvm": kvm,
            "lower": f"pvdesc_{lower}",
            "prefix": f"PVDESC_{lower.upper()}",
            "guard": f"PVDESC_{lower.upper()}_H",
        }
        header = templating.render("pvtime.h.j2", **ctx)
        rust = templating.render("pvtime.rs.j2", **ctx)
        return (
            (f"{desc.name}.h", "c-header", header.encode()),
            (f"{desc.name}.rs", "rust-module", rust.encode()),
        )
    return ()
