"""What a VMM profile is: the types every VMM's memory-map table is written in.

A :class:`Profile` says where a VMM puts RAM, its MMIO windows (:class:`MemMapEntry`,
in the spirit of QEMU's ``base_memmap[]``), where and how large it makes the
stolen-time region (:class:`SizeRule`), and which description values that VMM lets
a user configure.  The tables themselves are in :mod:`pvdesc.description.vmms`.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from pvdesc import kvm
from pvdesc.core.model import Describe, Vmm
from pvdesc.core.ranges import Range

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def round_up(value: int, align: int) -> int:
    """``value`` rounded up to a multiple of ``align`` (QEMU's ``ROUND_UP``)."""
    return -(-value // align) * align


class MemMapEntry(NamedTuple):
    """One MMIO window of a VMM's guest address map.

    Attributes:
        name: the VMM's own name for it (``VIRT_UART0`` becomes ``uart0``).
        base: first address.
        size: length in bytes.
        confirmed: False when the reference does not pin the value down.
    """

    name: str
    base: int
    size: int
    confirmed: bool = True

    @property
    def range(self) -> Range:
        """The window as a :class:`Range`."""
        return Range(self.base, self.size)


class SizeRule(enum.StrEnum):
    """How a VMM sizes the stolen-time region.

    - ``granules``: ``max_vcpus * 64`` rounded up to 64 KiB (pvdesc's own rule).
    - ``host-page``: ``REAL_HOST_PAGE_ALIGN(max_cpus * 64)`` (QEMU).
    - ``slot``: the whole fixed slot, whatever the vCPU count (kvmtool, crosvm).
    - ``per-vcpu``: exactly ``vcpus * 64`` bytes (Firecracker).
    """

    GRANULES = "granules"
    HOST_PAGE = "host-page"
    SLOT = "slot"
    PER_VCPU = "per-vcpu"


class Profile(NamedTuple):
    """Everything pvdesc knows about one VMM.

    Attributes:
        vmm: the ``vmm:`` value.
        title: human name with the source version read.
        unsupported: why the VMM cannot be used (``None`` when it can).
        ram_base: where RAM starts (``None``: anywhere, pvdesc's generic rules).
        ram_base_min: lowest RAM base the VMM accepts when it is configurable.
        ram_base_option: the VMM option that moves RAM (``None``: RAM base is fixed).
        ram_contiguous: RAM is one range split into banks in order (QEMU ``-m`` + NUMA).
        max_banks: how many RAM banks the VMM can make (``None``: any).
        numa: whether the VMM can be given a NUMA topology.
        vcpu_hotplug: whether ``max_vcpus`` may exceed ``vcpus`` (``-smp maxcpus``).
        max_vcpus: the VMM's own vCPU limit.
        memmap: fixed MMIO windows, base_memmap-style.
        stolen_time: the VMM's fixed region slot (``None``: not fixed).
        size_rule: how the region is sized.
        host_page: host page size assumed by ``host-page`` sizing.
        region_align: alignment a fixed base must have.
        system_memory: RAM the VMM keeps out of ``/memory`` and puts the region in.
        describe: how the VMM's own DT keeps the guest off the region.
        requires_fixed: the user must give ``placement: fixed`` with a base.
        confirmed: which values the reference confirms, and which it does not.
        configurable: description values the VMM lets a user choose, and how.
        source: the reference section and upstream files.
        version: the version of the VMM's source the map was read from, as a description's
            ``vmm_version`` names it (a release or a commit; ``""``: none, pvdesc's rules).
        version_text: that version in words, for reports and generated files' headers.
        upstream: the upstream file (and table) the memory map is read from.
    """

    vmm: Vmm
    title: str
    unsupported: str | None = None
    ram_base: int | None = None
    ram_base_min: int | None = None
    ram_base_option: str | None = None
    ram_contiguous: bool = False
    max_banks: int | None = None
    numa: bool = True
    vcpu_hotplug: bool = True
    max_vcpus: int = kvm.KVM_MAX_VCPUS
    memmap: tuple[MemMapEntry, ...] = ()
    stolen_time: MemMapEntry | None = None
    size_rule: SizeRule = SizeRule.GRANULES
    host_page: int = 4 * KiB
    region_align: int = kvm.GRANULE
    system_memory: Range | None = None
    describe: Describe | None = None
    requires_fixed: bool = False
    confirmed: str = ""
    configurable: tuple[str, ...] = ()
    source: str = ""
    version: str = ""
    version_text: str = ""
    upstream: str = ""
