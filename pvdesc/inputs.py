"""Reading untrusted input files with a size limit that holds before anything is read.

Every file pvdesc reads from the user (a description, a DTB, a base DTB for
``--into``, an ACPI table, a hypervisor config) goes through :func:`read_bounded`:
a regular file larger than the limit is refused by its size (``fstat``) without
reading a byte of it, and anything else (a pipe, ``/dev/zero``) is read up to one
byte past the limit and refused if that byte exists, so no input can make pvdesc
read without end.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pvdesc.errors import PvdescError


def too_big(size: int, limit: int, what: str, exact: bool = True) -> str:
    """The refusal message: ``file is N bytes; WHAT are limited to LIMIT``."""
    text = f"file is {size} bytes" if exact else f"file is more than {limit} bytes"
    return f"{text}; {what} are limited to {limit}"


def read_bounded(
    path: str | Path, limit: int, error: type[PvdescError], what: str, reading: str = ""
) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them; ``error`` (naming the file) otherwise.

    ``reading`` names the file's role in a read error (``cannot read base DTB: ...``).
    """
    try:
        with Path(path).open("rb") as fh:
            st = os.fstat(fh.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size > limit:
                raise error(too_big(st.st_size, limit, what), str(path))
            data = fh.read(limit + 1)
    except OSError as exc:
        role = f" {reading}" if reading else ""
        raise error(f"cannot read{role}: {exc.strerror}", str(path)) from None
    if len(data) > limit:
        raise error(too_big(len(data), limit, what, exact=False), str(path))
    return data
