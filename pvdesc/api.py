"""pvdesc's stable Python API, for VMM build scripts that call pvdesc in-process.

Everything a script needs is here; the other modules may change between versions.
Nothing is written unless you ask (:meth:`Build.write`); every error is a
:class:`PvdescError` whose ``str()`` is the one line the command would print
(``FILE:LINE:COL: key.path: message``)::

    from pvdesc import api

    result = api.build("vm.yaml")                     # or api.build_text(yaml_text)
    dtb = result.output("dtb")                        # bytes, as NAME.dtb would hold
    config = result.hypervisor_config                 # the pvdesc.hypervisor/1 config
    for vcpu, ipa in enumerate(config.pvtime_ipas):
        ...                                           # KVM_ARM_VCPU_PVTIME_IPA for each vCPU
    result.write("out/")                              # as `pvdesc build vm.yaml -o out/`

    report = api.check(dtb, result.output("hypervisor.json"))
    assert report.safe, report.to_text()

Importing this module imports the build machinery (Jinja2, PyYAML, libfdt); ``import
pvdesc`` alone does not, so ``pvdesc --version`` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from pvdesc import __version__
from pvdesc.audit import check as _check
from pvdesc.core.findings import Finding
from pvdesc.core.model import Boot, Memslot, Target
from pvdesc.core.ranges import Range
from pvdesc.description.load import load, loads
from pvdesc.emit import build as _build
from pvdesc.emit import hypervisor as _hypervisor
from pvdesc.errors import PvdescError
from pvdesc.read import acpitables
from pvdesc.read import dtb as _dtb
from pvdesc.tools.inputs import display_name

__all__ = [
    "Build",
    "CheckReport",
    "Finding",
    "HypervisorConfig",
    "Memslot",
    "PvdescError",
    "__version__",
    "build",
    "build_text",
    "check",
    "read_hypervisor_config",
]

#: A file, as a path (``str`` or :class:`os.PathLike`).
PathArg = str | os.PathLike[str]


class HypervisorConfig(NamedTuple):
    """A ``pvdesc.hypervisor/1`` config, validated field by field.

    Attributes:
        ipa_bits: the guest's IPA size.
        memslots: every memslot, in the config's order.
        region_base: first byte of the stolen-time region.
        region_size: its size in bytes.
        pvtime_ipas: vCPU ``n``'s ``KVM_ARM_VCPU_PVTIME_IPA`` at index ``n``, one per
            possible vCPU.
        source: where it was read from (a file name, or ``<bytes>``).
    """

    ipa_bits: int
    memslots: tuple[Memslot, ...]
    region_base: int
    region_size: int
    pvtime_ipas: tuple[int, ...]
    source: str


class Build:
    """Every output of one build, in memory.

    Compared and printed by its name and outputs, as a record is; it also holds the
    build's own result, which :meth:`write` publishes.

    Attributes:
        name: the description's ``name`` (the outputs are ``NAME.<suffix>``).
        outputs: file name -> exact bytes, in the order ``pvdesc build`` writes them
            (manifest last): the bytes the command writes.
    """

    __slots__ = ("_result", "name", "outputs")

    def __init__(self, name: str, outputs: Mapping[str, bytes], result: _build.BuildResult) -> None:
        self.name = name
        self.outputs = outputs
        self._result = result

    def __repr__(self) -> str:
        return f"Build(name={self.name!r}, outputs={self.outputs!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Build):
            return NotImplemented
        return (self.name, self.outputs) == (other.name, other.outputs)

    __hash__ = None  # type: ignore[assignment]  # equal by value, and the outputs are a dict

    def output(self, suffix: str) -> bytes:
        """The bytes of ``NAME.<suffix>`` (``"dtb"``, ``"dtbo"``, ``"hypervisor.json"``, ``"rs"``).

        Raises :class:`PvdescError` naming the outputs there are.
        """
        return _build.only(self._result, suffix).data

    @property
    def hypervisor_config(self) -> HypervisorConfig:
        """The build's ``NAME.hypervisor.json``, read back as :func:`read_hypervisor_config`."""
        data = self.output("hypervisor.json")
        return _config(_hypervisor.target_from_config(data, f"{self.name}.hypervisor.json"))

    def write(self, outdir: PathArg, *, force: bool = False) -> None:
        """Publish the outputs into ``outdir`` as ``pvdesc build -o`` does (one generation).

        ``force`` replaces files in the way that pvdesc did not write.
        """
        _build.publish_outputs(Path(outdir), self.name, self._result.outputs, force=force)


def _wrap(result: _build.BuildResult) -> Build:
    outputs = {o.name: o.data for o in result.outputs}
    return Build(result.layout.description.name, outputs, result)


def _base(into: bytes | PathArg | None) -> tuple[bytes | None, str]:
    if into is None:
        return None, ""
    if isinstance(into, bytes):
        return into, "base DTB"
    path = os.fspath(into)
    return _build.read_base_dtb(path), display_name(path)


def build(path: PathArg, *, into: bytes | PathArg | None = None) -> Build:
    """Build a description file (``"-"`` reads standard input); nothing is written.

    ``into``: a VMM's own DTB (its bytes, or its path) to patch instead of writing
    pvdesc's tree, as ``build --into``.
    """
    loaded = load(os.fspath(path))
    base, base_name = _base(into)
    return _wrap(_build.plan_loaded(loaded, base, base_name))


def build_text(
    text: str | bytes, *, name: str = "<description>", into: bytes | PathArg | None = None
) -> Build:
    """Build a description given as YAML text; errors name ``name:LINE:COL``."""
    data = text.encode() if isinstance(text, str) else text
    loaded = loads(data, name)
    base, base_name = _base(into)
    return _wrap(_build.plan_loaded(loaded, base, base_name))


def _config(target: Target) -> HypervisorConfig:
    return HypervisorConfig(
        ipa_bits=target.ipa_bits,
        memslots=tuple(target.memslots or ()),
        region_base=target.region.base,
        region_size=target.region.size,
        pvtime_ipas=tuple(ipa for _, ipa in sorted(target.vcpu_ipas)),
        source=target.source,
    )


def read_hypervisor_config(config: bytes | PathArg) -> HypervisorConfig:
    """Read and validate a ``pvdesc.hypervisor/1`` config: its bytes, or its path."""
    if isinstance(config, bytes):
        return _config(_hypervisor.target_from_config(config, "<bytes>"))
    return _config(_hypervisor.read_target(os.fspath(config)))


class CheckReport(NamedTuple):
    """What ``pvdesc check`` found.

    Attributes:
        findings: every :data:`Finding`, errors first (the README lists the codes).
    """

    findings: tuple[Finding, ...]

    @property
    def safe(self) -> bool:
        """True when no finding is an error (the command's exit status 0)."""
        return not _check.unsafe(self.findings)

    def to_text(self) -> str:
        """The command's text report."""
        return _check.to_text(self.findings)

    def to_json(self) -> str:
        """The ``pvdesc.check/1`` JSON document."""
        return _check.to_json(self.findings)


def check(
    dtb: bytes,
    config: bytes | HypervisorConfig,
    *,
    boot: str = "linux-dt",
    acpi: Sequence[bytes] = (),
    dtb_name: str = "<dtb>",
) -> CheckReport:
    """``pvdesc check`` on a DTB's bytes against a hypervisor config (its bytes, or as read).

    ``boot`` is ``linux-dt``, ``uefi-dt`` or ``uefi-acpi``; ``acpi`` holds SSDT/SRAT
    ``.aml`` bytes.  An unusable input raises :class:`PvdescError` naming ``dtb_name``.
    """
    try:
        mode = Boot(boot)
    except ValueError:
        raise PvdescError(f"boot {boot!r} is not linux-dt, uefi-dt or uefi-acpi") from None
    tree = _dtb.parse(dtb, dtb_name)
    if isinstance(config, HypervisorConfig):
        target = Target(
            region=Range(config.region_base, config.region_size),
            vcpu_ipas=tuple(enumerate(config.pvtime_ipas)),
            ipa_bits=config.ipa_bits,
            memslots=config.memslots,
            source=config.source,
        )
    else:
        target = _hypervisor.target_from_config(config, "<hypervisor config>")
    tables = [acpitables.parse(t, f"<acpi {i}>") for i, t in enumerate(acpi)]
    return CheckReport(_check.check(tree, target, mode, tables))
