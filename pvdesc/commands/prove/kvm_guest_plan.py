"""Plan stage two of ``prove --kvm``: the Linux guest's kernel ``Image``, its DTB and initrd,
and where each goes in the guest's usable RAM.

- :func:`read_image`: the kernel ``Image`` as the arm64 boot protocol defines it
  (``Documentation/arch/arm64/booting.rst``: ``text_offset`` at 8, ``image_size`` at 16,
  magic ``ARM\\x64`` at 56); a gzip'd one is decompressed; anything else is refused;
- :func:`plan`: where the kernel, DTB and initrd go in usable RAM, and the DTB itself:
  the VMM's minimal tree (``templates/kvm-guest.dts.j2``, compiled with dtc) with the
  description's ``/memory`` and ``/reserved-memory`` merged in exactly as ``pvdesc build
  --into`` merges (:func:`pvdesc.emit.build.render_outputs`).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

from pvdesc.commands.prove import guest
from pvdesc.core.model import Boot, Purpose
from pvdesc.core.ranges import Range, subtract
from pvdesc.description.load import LoadedDescription
from pvdesc.emit import build, templating
from pvdesc.errors import DTError, ProveError, ToolError
from pvdesc.layout.allocate import Layout
from pvdesc.tools import proc, signals

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


class Image(NamedTuple):
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


class Plan(NamedTuple):
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
    with signals.scratch("pvdesc-vmmdt-") as tmp:
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
