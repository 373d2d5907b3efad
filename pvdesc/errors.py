"""One error class per layer, all under :class:`PvdescError`.

Every error carries ``where``: a location a user can act on.  It is either a
``file:line:column`` string, or a key path into the description (a tuple such
as ``("memory", 1, "size")``) that the CLI resolves to ``file:line:column``
through the description's source map.  The CLI prints ``where: message`` on one
line and exits with status 2.
"""

from __future__ import annotations

import re
import reprlib

KeyPath = tuple[str | int, ...]

# The patterns are compiled on first use (re keeps them): only an error needs them, and
# compiling both at import cost every command's start half a millisecond.
#: A key that can be written bare in a key path; anything else is quoted.
_PLAIN_KEY = r"[A-Za-z0-9_-]{1,64}"
#: Control characters (C0, DEL, C1) and the Unicode line/paragraph separators.
_CONTROL = r"[\x00-\x1f\x7f-\x9f\u2028\u2029]"
#: The longest error line the CLI prints; longer messages are cut (untrusted input can be huge).
MAX_MESSAGE_CHARS = 1000


def format_keypath(path: KeyPath) -> str:
    """Render a key path the way a user would write it: ``memory[1].size``.

    A key that is not a plain name (a hostile description can use any string) is
    shown quoted and escaped, ``["a\\nb"]``, so a path never spans lines.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(_PLAIN_KEY, part):
            out += f".{part}" if out else part
        else:
            import json  # only for such a key: the check command starts without json

            out += f"[{json.dumps(part[:64])}]"
    return out or "(document)"


def _escape(match: re.Match[str]) -> str:
    import json  # only for a control character: the check command starts without json

    return str(json.dumps(match.group())[1:-1])


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as one printable line: control characters escaped, cut to ``limit`` characters.

    The CLI's last line of defence for "one line per error": messages quote
    untrusted input (file names, DT node names, tool output).
    """
    flat = re.sub(_CONTROL, _escape, text)
    if len(flat) > limit:
        flat = flat[: limit - 30] + f"... ({len(flat) - limit + 30} more characters)"
    return flat


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


#: How untrusted values are quoted in messages: bounded, whatever the input.
_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2


def short(value: object) -> str:
    """``repr(value)``, cut to a few dozen characters, for quoting untrusted values in messages."""
    return _SHORT.repr(value)
