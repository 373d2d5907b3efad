"""One error class per layer, all under :class:`PvdescError`.

Every error carries ``where``: a location a user can act on.  It is either a
``file:line:column`` string, or a key path into the description (a tuple such
as ``("memory", 1, "size")``) that the CLI resolves to ``file:line:column``
through the description's source map.  The CLI prints ``where: message`` on one
line and exits with status 2.
"""

from __future__ import annotations

KeyPath = tuple[str | int, ...]


def format_keypath(path: KeyPath) -> str:
    """Render a key path the way a user would write it: ``memory[1].size``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(document)"


class PvdescError(Exception):
    """Base class: a problem with the user's input, reported without a traceback.

    Attributes:
        message: what is wrong and, where possible, what to do about it.
        where: ``file:line:column`` text, a key path into the description, or
            ``None`` when the error has no location (e.g. a missing tool).
    """

    def __init__(self, message: str, where: str | KeyPath | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        if self.where is None:
            return self.message
        if isinstance(self.where, tuple):
            return f"{format_keypath(self.where)}: {self.message}"
        return f"{self.where}: {self.message}"


class DescriptionError(PvdescError):
    """The YAML description cannot be parsed or violates the schema/model rules."""


class LayoutError(PvdescError):
    """The description is well formed but no safe stolen-time layout exists for it."""


class DTError(PvdescError):
    """A devicetree cannot be written, or a DTB given to pvdesc cannot be read."""


class AcpiError(PvdescError):
    """An ACPI table cannot be generated, compiled or read back."""


class ToolError(PvdescError):
    """An external tool (iasl, dtc, qemu, ...) is missing, failed or timed out."""


class OutputError(PvdescError):
    """Outputs cannot be written where they were asked for."""


class ProveError(PvdescError):
    """A description ``pvdesc prove`` cannot boot truthfully (QEMU virt cannot represent it)."""
