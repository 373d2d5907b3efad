"""The model of a ``pvdesc validate`` run: its failures, per-description and whole-run reports.

:class:`FleetReport` is what :func:`pvdesc.commands.validate.fleet.run` returns and
what :mod:`pvdesc.commands.validate.reports` renders; :class:`Externals` records
which external validators the run used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from pvdesc.errors import PvdescError
from pvdesc.tools.validators import Validator

if TYPE_CHECKING:
    from pvdesc.commands.validate.fleet import Shard


class ValidateUsageError(PvdescError):
    """Arguments ``pvdesc validate`` cannot use: no such path, no descriptions, a missing tool."""


class Externals(NamedTuple):
    """Which external validators a run uses.

    Attributes:
        mode: ``on`` (``--external``: every validator, a missing tool is an error),
            ``off`` (``--no-external``) or ``auto`` (the default: those whose tools exist).
        enabled: the validators that run, in :class:`~pvdesc.tools.validators.Validator` order.
        missing: with ``auto``, the validators skipped because a program is missing,
            as ``(validator, missing program names)``.
        schema: the compiled dtschema file when dt-validate runs (a temporary file that
            lives as long as the run), else ``None``.
    """

    mode: str
    enabled: tuple[Validator, ...]
    missing: tuple[tuple[Validator, tuple[str, ...]], ...]
    schema: str | None


class Failure(NamedTuple):
    """One reason a description failed.

    Attributes:
        rule: what failed: ``description``, ``layout``, ``acpi``, ``devicetree``,
            ``tool`` or ``output`` (the build refused it), ``check:CODE`` (a
            ``pvdesc check`` finding), or a validator's name (``dtc``, ``dt-validate``,
            ``iasl``, ``acpiexec``).
        file: the description's path as found.
        line: 1-based line in the description, or ``None``.
        column: 1-based column, or ``None``.
        message: the text after ``file:line:col: ``.
    """

    rule: str
    file: str
    line: int | None
    column: int | None
    message: str

    @property
    def location(self) -> str:
        """``file:line:col``, or ``file`` without a line."""
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column if self.column is not None else 1}"

    @property
    def text(self) -> str:
        """``file:line:col: message``, as ``pvdesc build`` would print it."""
        return f"{self.location}: {self.message}"


class FileReport(NamedTuple):
    """What validating one description found.

    Attributes:
        path: the description's path as found (relative to the argument given).
        vm: the VM's name when the description could be loaded, else ``None``.
        stages: what ran, in order: ``build``, ``check``, then the validators.
        failures: every failure, in the order found (empty: the file is ok).
    """

    path: str
    vm: str | None
    stages: tuple[str, ...]
    failures: tuple[Failure, ...]

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failures


class FleetReport(NamedTuple):
    """A whole ``pvdesc validate`` run.

    Attributes:
        files: one report per description, sorted by path.
        externals: the external validators used.
        shard: the part of the fleet this run validated (``--shard``), or ``None``.
        found: how many descriptions the paths hold (more than ``files`` in a shard).
    """

    files: tuple[FileReport, ...]
    externals: Externals
    shard: Shard | None = None
    found: int | None = None

    @property
    def failed(self) -> int:
        """How many descriptions failed."""
        return sum(1 for f in self.files if not f.ok)

    @property
    def ok(self) -> bool:
        """True when every description passed."""
        return self.failed == 0
