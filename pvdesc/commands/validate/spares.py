"""Scratch files renamed into place, not created: a chunk's DTS and recompiled-DTB files.

On the ext4 file system of the machine the fleet benchmark ran on, creating a
file cost 0.86 ms of CPU (allocating its inode), while renaming one cost 9 us
and rewriting an existing one 10 us.  dtc needs each description's DTS, and
the DTB it compiles from it, as files under their own names, one description
at a time; so two files serve a whole chunk, each renamed to the next
description's name in turn (:meth:`Spares.holding`).  A tool sees the same
names and bytes as if each file had been created for it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


class Spares:
    """Files in a folder, each lent under one name after another.

    Attributes:
        folder: where an idle file waits (under a name starting with a dot).
        idle: the idle files.
        made: how many files were created.
    """

    __slots__ = ("folder", "idle", "made")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.idle: list[Path] = []
        self.made = 0

    @contextlib.contextmanager
    def holding(self, path: Path, data: bytes) -> Iterator[None]:
        """During the block ``path`` is a file holding ``data``: an idle file renamed there.

        A file is created only when none is idle.  ``path`` must not exist (a new
        name in a folder on the same file system).  After the block the file goes
        back to the idle ones, whatever it holds then; an :class:`OSError` writing
        it is raised.
        """
        if self.idle:
            spare = self.idle.pop()
            os.rename(spare, path)
        else:
            spare = self.folder / f".spare-{self.made}"
            self.made += 1
        try:
            path.write_bytes(data)  # an existing file is truncated and rewritten, not created
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):  # never written: nothing to keep
                os.rename(path, spare)
                self.idle.append(spare)
