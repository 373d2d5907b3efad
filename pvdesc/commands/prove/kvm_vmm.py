"""Build the project's VMM (``vmm/pvdesc-vmm.c``) for ``prove --kvm``: cross-compiled
static, optionally against a build's C header, cached by source hash outside the repository."""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from pvdesc.commands.prove import guest
from pvdesc.errors import ToolError
from pvdesc.tools import proc, qemu, signals

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


def _c_name(name: str) -> str:
    return name.replace("-", "_")


class Header(NamedTuple):
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
        with signals.scratch(".build-", str(out.parent)) as tmp:
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
