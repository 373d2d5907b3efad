"""What a TCG proof boot found: the status of each granule, the observations beyond them,
and the whole :class:`ProveReport`."""

from __future__ import annotations

import enum
from typing import NamedTuple

from pvdesc.commands.prove import guest
from pvdesc.core.model import Describe
from pvdesc.core.ranges import Range
from pvdesc.layout.allocate import Layout
from pvdesc.read.guest_output import EfiRegion, GuestDt


class Status(enum.StrEnum):
    """What the guest made of one granule of the region.

    - ``system-ram``: a ``System RAM`` line covers it: the guest may allocate it (fail);
    - ``firmware-ram``: the UEFI memory map gives it a RAM type (Conventional,
      Boot Data, ...): EDK2 may have placed data there (fail);
    - ``device``: another resource claims it, so it shares a granule with a device (fail);
    - ``reserved``: a top-level ``reserved`` line: memblock ``nomap``, never mapped
      or allocated (arm64 ``request_standard_resources``) (pass);
    - ``pnp``: only a ``pnp`` claim (the SSDT's PNP0C02 device) (pass);
    - ``absent``: no ``/proc/iomem`` line touches it: the guest does not know it (pass).
    """

    SYSTEM_RAM = "system-ram"
    FIRMWARE_RAM = "firmware-ram"
    DEVICE = "device"
    RESERVED = "reserved"
    PNP = "pnp"
    ABSENT = "absent"

    @property
    def safe(self) -> bool:
        """True when the guest can never use the granule as RAM."""
        return self in (Status.RESERVED, Status.PNP, Status.ABSENT)


#: What each describe mode should make the guest show.
EXPECTED = {
    Describe.NONE: Status.ABSENT,
    Describe.EXCLUDE: Status.ABSENT,
    Describe.RESERVED_MEMORY: Status.RESERVED,
    Describe.ACPI: Status.PNP,
}


class Evidence(NamedTuple):
    """One line the guest printed, and where.

    Attributes:
        source: ``/proc/iomem`` (``, below``/``, above`` for neighbours), ``kernel log``
            or ``devicetree``.
        line: the text as printed (timestamps kept).
    """

    source: str
    line: str


class GranuleResult(NamedTuple):
    """The verdict on one 64 KiB granule of the region.

    Attributes:
        range: the granule.
        status: what the guest made of it.
        expected: what the description should make it show.
        evidence: the lines that show it.
    """

    range: Range
    status: Status
    expected: Status
    evidence: tuple[Evidence, ...]

    @property
    def passed(self) -> bool:
        """Safe, and what the description says."""
        return self.status.safe and self.status is self.expected


class Observation(NamedTuple):
    """An observation beyond the granules (boot path, memory, SSDT) and whether it held.

    Attributes:
        name: ``boot-path``, ``memory`` or ``ssdt``.
        passed: whether it held.
        message: what was found, in one sentence.
        evidence: the lines that show it.
    """

    name: str
    passed: bool
    message: str
    evidence: tuple[Evidence, ...] = ()


class ProveReport(NamedTuple):
    """Everything one proof boot showed.

    Attributes:
        layout: the layout that was booted.
        source: the description's path.
        kernel: the kernel image booted.
        kernel_package: its Debian package, when known.
        boot: the boot result: serial log, parsed ``/proc/iomem``, QEMU's command line.
        granules: one result per 64 KiB granule of the region.
        checks: boot path, memory and (describe acpi) SSDT checks.
        efi_map: the UEFI memory map the guest printed (empty for linux-dt).
        guest_dt: the DT memory facts the guest printed.
    """

    layout: Layout
    source: str
    kernel: str
    kernel_package: str
    boot: guest.BootResult
    granules: tuple[GranuleResult, ...]
    checks: tuple[Observation, ...]
    efi_map: tuple[EfiRegion, ...]
    guest_dt: GuestDt

    @property
    def passed(self) -> bool:
        """Every granule and every check passed."""
        return all(g.passed for g in self.granules) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[str, ...]:
        """One phrase per failed granule or check."""
        out = []
        for g in self.granules:
            if not g.passed:
                seen = STATUS_TEXT[g.status]
                if g.status.safe:
                    seen += f", but the description makes it {STATUS_TEXT[g.expected]}"
                out.append(f"granule {g.range} is {seen}")
        out += [f"{c.name}: {c.message}" for c in self.checks if not c.passed]
        return tuple(out)


STATUS_TEXT = {
    Status.SYSTEM_RAM: "System RAM",
    Status.FIRMWARE_RAM: "RAM in the UEFI memory map",
    Status.DEVICE: "claimed by a device",
    Status.RESERVED: "reserved (nomap)",
    Status.PNP: "pnp claim",
    Status.ABSENT: "not present",
}
