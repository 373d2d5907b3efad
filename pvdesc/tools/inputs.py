"""Reading untrusted input files with a size limit that holds before anything is read.

Every file pvdesc reads from the user (a description, a DTB, a base DTB for
``--into``, an ACPI table, a hypervisor config) goes through :func:`read_bounded`:
a regular file larger than the limit is refused by its size (``fstat``) without
reading a byte of it, and anything else (a pipe, ``/dev/zero``) is read up to one
byte past the limit and refused if that byte exists, so no input can make pvdesc
read without end.

``-`` names standard input, as it does for dtc, fdtget and fdtput (a file really
called ``-`` is ``./-``); errors then name it ``<stdin>``, as dtc does.
"""

from __future__ import annotations

import os
import stat
import sys
from os import PathLike

from pvdesc.errors import PvdescError

#: The file name that means standard input (or, for an output, standard output).
STDIO = "-"
#: How errors name standard input (dtc's word for it).
STDIN_NAME = "<stdin>"


def is_stdio(path: str | PathLike[str] | None) -> bool:
    """True when ``path`` is ``-``: standard input (or output), not a file."""
    return path is not None and str(path) == STDIO


def display_name(path: str | PathLike[str]) -> str:
    """How errors and reports name an input: ``<stdin>`` for ``-``, else the path as given."""
    return STDIN_NAME if is_stdio(path) else str(path)


def too_big(size: int, limit: int, what: str, exact: bool = True) -> str:
    """The refusal message: ``file is N bytes; WHAT are limited to LIMIT``."""
    text = f"file is {size} bytes" if exact else f"file is more than {limit} bytes"
    return f"{text}; {what} are limited to {limit}"


def read_bounded(
    path: str | PathLike[str], limit: int, error: type[PvdescError], what: str, reading: str = ""
) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them; ``error`` (naming the file) otherwise.

    ``reading`` names the file's role in a read error (``cannot read base DTB: ...``).
    ``-`` reads standard input (to its end, or one byte past the limit).
    """
    data = _read_bounded(path, limit, error, what, reading, buffer=False)
    assert isinstance(data, bytes)
    return data


def read_bounded_buffer(
    path: str | PathLike[str], limit: int, error: type[PvdescError], what: str, reading: str = ""
) -> bytearray:
    """:func:`read_bounded` into a bytearray, what libfdt reads: a file's bytes are not copied."""
    data = _read_bounded(path, limit, error, what, reading, buffer=True)
    assert isinstance(data, bytearray)
    return data


def _read_bounded(
    path: str | PathLike[str],
    limit: int,
    error: type[PvdescError],
    what: str,
    reading: str,
    buffer: bool,
) -> bytes | bytearray:
    name = display_name(path)
    data: bytes | bytearray
    try:
        if is_stdio(path):
            data = _read_stdin(limit + 1)
        else:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if stat.S_ISREG(st.st_mode):
                    if st.st_size > limit:
                        raise error(too_big(st.st_size, limit, what), name)
                    # Ask for the size the file has (and a byte more, to see it grow): a
                    # read of limit + 1 bytes first allocates that much (64 MiB for a DTB).
                    if buffer:
                        data = bytearray(st.st_size + 1)
                        del data[fh.readinto(data) :]
                    else:
                        data = fh.read(st.st_size + 1)
                    if len(data) > st.st_size:  # it grew since fstat: read on to the limit
                        data += fh.read(limit - len(data) + 1)
                else:
                    data = fh.read(limit + 1)
    except OSError as exc:
        role = f" {reading}" if reading else ""
        raise error(f"cannot read{role}: {exc.strerror}", name) from None
    if len(data) > limit:
        raise error(too_big(len(data), limit, what, exact=False), name)
    return bytearray(data) if buffer and isinstance(data, bytes) else data


def _read_stdin(most: int) -> bytes:
    """Up to ``most`` bytes of standard input, read until its end (a pipe gives them in pieces)."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # no standard input at all (closed), or a text stream a caller swapped in
        if sys.stdin is None:
            raise OSError(0, "standard input is closed")
        return sys.stdin.read(most).encode()[:most]
    chunks: list[bytes] = []
    left = most
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
