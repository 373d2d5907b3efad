"""File operations relative to directory descriptors that never follow a link.

Nothing under an output directory ``DIR`` is reached through a link pvdesc did
not make: every directory below ``DIR`` is opened relative to its parent's
descriptor with ``O_NOFOLLOW`` (``openat(2)``), files are created with
``O_EXCL|O_NOFOLLOW`` and fsynced before they count, and a symlink or other
entry pvdesc did not make is refused in one line naming it (:func:`refusal`).
Every :class:`OSError` becomes one :class:`~pvdesc.errors.OutputError` line naming
the path pvdesc was creating, writing or removing (:func:`at`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from pvdesc.errors import OutputError

#: Opening a directory under ``DIR``: never through a symlink (``O_NOFOLLOW``), only a directory.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Opening a file under ``DIR`` to read it: never through a symlink, never blocking on a FIFO.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: The largest file :func:`read_plain` reads from ``DIR`` (outputs are KiB; a DTB at most 64 MiB).
MAX_READ = 1 << 27


def random_hex(nbytes: int) -> str:
    """``nbytes`` from the kernel's random source, in hex: unguessable names for temporary entries.

    The same bytes ``secrets.token_hex`` returns (both read ``os.urandom``), without the
    import of :mod:`secrets`, which brings hmac, hashlib, base64 and random
    (2.5 ms of every ``pvdesc build`` on the build machine).
    """
    return os.urandom(nbytes).hex()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fill(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the new file ``fd``, fsync it, close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync it."""
    fill(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode), data)


def cannot(exc: OSError, path: Path) -> OutputError:
    """An I/O failure as one line naming the path pvdesc was creating, writing or removing."""
    return OutputError(f"cannot write outputs: {exc.strerror or exc}", str(path))


@contextlib.contextmanager
def at(path: Path) -> Iterator[None]:
    """Report any :class:`OSError` in the block as :func:`cannot` naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise cannot(exc, path) from None


def refusal(parent: int, name: str, path: Path, kind: str) -> OutputError:
    """Why ``path`` (``name`` in the directory ``parent``) is not the ``kind`` pvdesc makes."""
    try:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if stat.S_ISLNK(mode):
        return OutputError(
            "is a symbolic link pvdesc did not make; pvdesc never follows it, writes or "
            "deletes through it: move it away",
            str(path),
        )
    return OutputError(f"is not a {kind} pvdesc made; move it away", str(path))


def open_dir(parent: int, parent_path: Path, name: str, *, create: bool) -> int | None:
    """Open the directory ``name`` in ``parent`` without following a link; None if absent.

    With ``create`` a missing directory is made first.  A symlink or anything but a
    directory is refused (:func:`refusal`).
    """
    path = parent_path / name
    for attempt in (0, 1):
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create or attempt:
                return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise refusal(parent, name, path, "directory") from None
            raise cannot(exc, path) from None
        with at(path), contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=parent)
    return None  # not reached


def lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def read_plain(parent: int, name: str) -> bytes | None:
    """The bytes of the regular file ``name`` in ``parent``; None if it is absent or not one."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=parent)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_READ:
                return None
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_in(parent: int, name: str, data: bytes, mode: int) -> None:
    """Create ``name`` in ``parent`` (it must not exist; never through a link), write, fsync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fill(os.open(name, flags, mode, dir_fd=parent), data)


def is_link(parent: int, name: str) -> bool:
    st = lstat(parent, name)
    return st is not None and stat.S_ISLNK(st.st_mode)


def symlink_as(parent: int, target: str, name: str, path: Path) -> None:
    """Make ``name`` in ``parent`` a symlink to ``target``, atomically replacing what is there.

    An error names ``path``, the link being made (never its target).
    """
    tmp = f".{name}.{random_hex(4)}.pvdesc-tmp"
    with at(path):
        os.symlink(target, tmp, dir_fd=parent)
        try:
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
