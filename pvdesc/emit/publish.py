"""Publish a build's files so that a reader sees all the old outputs or all the new ones.

POSIX renames one directory entry atomically, never several, so the files of a
build cannot be swapped in one step by renaming them one by one: a kill between
two renames would leave a new DTB beside an old hypervisor config, exactly the
mismatch pvdesc exists to prevent.  Instead there is a single pointer:

::

    DIR/NAME.dtb           -> .pvdesc/NAME/current/NAME.dtb     (symlinks that never change)
    DIR/NAME.manifest.json -> .pvdesc/NAME/current/NAME.manifest.json
    ...
    DIR/.pvdesc/NAME/current -> g-XXXXXXXX                        (the pointer)
    DIR/.pvdesc/NAME/previous -> g-YYYYYYYY                       (the one before, kept)
    DIR/.pvdesc/NAME/g-XXXXXXXX/NAME.dtb, ...                     (a generation, read-only)
    DIR/.pvdesc/NAME/lock                                         (serialises builds of NAME)

:func:`publish` writes every file of the new generation into a fresh directory
and fsyncs it, creates any missing ``DIR/NAME.*`` symlink (a new name dangles,
i.e. is absent, until the switch), and then replaces ``current`` with one
``rename(2)``: the commit point.  Before it, every name resolves into the old
generation; after it, into the new one; names only the old build had dangle
(absent) and are removed afterwards.  A kill at any instant therefore leaves
the old complete outputs or the new complete outputs, plus at most some hidden
leftovers (a half-written generation, a temporary symlink, a dangling name)
that the next build removes.  The previous generation is kept until the next
build, so a reader that resolved ``current`` just before a switch can finish.

A failed build (a full disk, a signal) removes its unpublished generation; a
generation older than ``previous`` is deleted only after the new one is
published, so a build that fails costs nothing that was there.

Nothing under ``DIR`` is reached through a link pvdesc did not make: every
directory below ``DIR`` is opened relative to its parent's descriptor with
``O_NOFOLLOW`` (``openat(2)``), files are created with ``O_EXCL|O_NOFOLLOW``, the
pointers must name a plain ``g-*`` generation, and generations are removed with
``shutil.rmtree(dir_fd=...)``, which never follows a link.  A symlinked
``.pvdesc/NAME``, ``lock``, ``current``, ``previous`` or ``g-*`` is refused in one
line naming it.  (``DIR`` itself may be a symlink: it is the user's choice.)

A consumer that reads several files reads them from one generation: resolve
``DIR/.pvdesc/NAME/current`` once, or read through the symlinks and check every
file against the manifest's sha256 (:func:`read_outputs` does both), retrying if
they disagree because a build switched generations mid-read.

Outputs written by a pvdesc before this layout (plain files listed, with their
hashes, by a plain ``NAME.manifest.json``) are adopted: hard-linked into a
generation first, so the switch from plain files to symlinks is atomic too.  A
file pvdesc did not write (not one of its symlinks, not listed by its manifest
with matching content) is never overwritten unless ``force``; nor is a
generation whose files no longer match its manifest's sha256 (a hand edit
through ``DIR/NAME.dtb``: root ignores the read-only mode).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pvdesc.errors import OutputError

#: The hidden directory, inside the output directory, that holds every VM's generations.
STORE = ".pvdesc"
POINTER = "current"
#: The generation ``current`` named before the last switch, kept for readers mid-switch.
PREVIOUS = "previous"
GENERATION_PREFIX = "g-"
MANIFEST_FORMAT = "pvdesc.manifest/1"
#: VM names (pvdesc.core.model.NAME_RE) and output file names: checked again at write time.
_VM_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_FILE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}(\.[a-z0-9-]+)+")
#: Attempts :func:`read_outputs` makes when builds keep switching generations under it.
READ_ATTEMPTS = 5


def check_name(outdir: Path, name: str, vm: str | None = None) -> Path:
    """The path of output ``name`` in ``outdir``, refusing any name that could leave it.

    Defence in depth: descriptions already restrict ``name`` to
    ``[a-z0-9][a-z0-9-]*``; this refuses, at the last moment, separators, ``..``,
    hidden names and NUL bytes.  A name of only ``[a-z0-9.-]`` that starts with a
    letter or digit is one entry of ``outdir`` itself, so its parent is ``outdir``
    (a symlinked ``outdir`` is followed as a whole); no resolving is needed.
    """
    if (
        not _FILE_RE.fullmatch(name)
        or name != Path(name).name
        or (vm is not None and not name.startswith(f"{vm}."))
    ):
        raise OutputError(f"refusing to write {name!r}: not a plain output file name", str(outdir))
    return outdir / name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fill(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the new file ``fd``, fsync it, close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync it."""
    _fill(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode), data)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Replace one file atomically: a temporary file beside it, fsync, rename, fsync the directory.

    For single files (``pvdesc map --svg/--html``): a reader sees the old file
    or the new one, never a part.
    """
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        _write_new(tmp, data)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: Opening a directory under ``DIR``: never through a symlink (``O_NOFOLLOW``), only a directory.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Opening a file under ``DIR`` to read it: never through a symlink, never blocking on a FIFO.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: The names pvdesc gives generations; ``current`` and ``previous`` point to nothing else.
_GENERATION_RE = re.compile(rf"{GENERATION_PREFIX}[0-9a-f]{{16}}")
#: The largest file :func:`_read_plain` reads from ``DIR`` (outputs are KiB; a DTB at most 64 MiB).
_MAX_READ = 1 << 27


def _cannot(exc: OSError, path: Path) -> OutputError:
    """An I/O failure as one line naming the path pvdesc was creating, writing or removing."""
    return OutputError(f"cannot write outputs: {exc.strerror or exc}", str(path))


@contextlib.contextmanager
def _at(path: Path) -> Iterator[None]:
    """Report any :class:`OSError` in the block as :func:`_cannot` naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise _cannot(exc, path) from None


def _refusal(parent: int, name: str, path: Path, kind: str) -> OutputError:
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


def _open_dir(parent: int, parent_path: Path, name: str, *, create: bool) -> int | None:
    """Open the directory ``name`` in ``parent`` without following a link; None if absent.

    With ``create`` a missing directory is made first.  A symlink or anything but a
    directory is refused (:func:`_refusal`).
    """
    path = parent_path / name
    for attempt in (0, 1):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create or attempt:
                return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refusal(parent, name, path, "directory") from None
            raise _cannot(exc, path) from None
        with _at(path), contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=parent)
    return None  # not reached


def _lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _read_plain(parent: int, name: str) -> bytes | None:
    """The bytes of the regular file ``name`` in ``parent``; None if it is absent or not one."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=parent)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            if sum(map(len, chunks)) > _MAX_READ:
                return None
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_in(parent: int, name: str, data: bytes, mode: int) -> None:
    """Create ``name`` in ``parent`` (it must not exist; never through a link), write, fsync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    _fill(os.open(name, flags, mode, dir_fd=parent), data)


def _link_target(vm: str, name: str) -> str:
    return f"{STORE}/{vm}/{POINTER}/{name}"


@dataclass
class _Dirs:
    """The output directory and VM ``vm``'s store, opened without following links.

    Attributes:
        outdir: ``DIR`` as given (a symlinked ``DIR`` is followed as a whole: the user's choice).
        vm: the VM's name.
        out: a descriptor of ``DIR``.
        store: a descriptor of ``DIR/.pvdesc/NAME``, or None when it does not exist.
    """

    outdir: Path
    vm: str
    out: int
    store: int | None

    @property
    def store_path(self) -> Path:
        return self.outdir / STORE / self.vm

    def close(self) -> None:
        for fd in (self.out, self.store):
            if fd is not None:
                os.close(fd)


@contextlib.contextmanager
def _opened(outdir: Path, vm: str, *, create: bool) -> Iterator[_Dirs | None]:
    """:class:`_Dirs` for ``outdir`` (None when it does not exist and ``create`` is false).

    Every directory below ``DIR`` is opened relative to its parent's descriptor
    with ``O_NOFOLLOW``: a symlinked ``.pvdesc`` or ``.pvdesc/NAME`` is refused,
    never followed, so nothing pvdesc writes or deletes can be reached through it.
    """
    if create:
        with _at(outdir):
            os.makedirs(outdir, exist_ok=True)
    try:
        out = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise OutputError("not a directory", str(outdir)) from None
    except OSError as exc:
        if exc.errno != errno.ENOENT or create:
            raise _cannot(exc, outdir) from None
        out = -1
    if out < 0:
        yield None
        return
    dirs = _Dirs(outdir, vm, out, None)
    try:
        top = _open_dir(out, outdir, STORE, create=create)
        if top is not None:
            try:
                dirs.store = _open_dir(top, outdir / STORE, vm, create=create)
            finally:
                os.close(top)
        yield dirs
    finally:
        dirs.close()


@dataclass(frozen=True)
class _State:
    """What an output directory holds for one VM before a publish.

    Attributes:
        current: the generation ``current`` points to (a name in the store), or ``None``.
        previous: the generation ``previous`` points to, or ``None``.
        generations: every ``g-*`` directory in the store.
        legacy: plain files (name -> bytes) an older pvdesc wrote, to adopt.
        foreign: stable names in the way that pvdesc did not write.
    """

    current: str | None
    previous: str | None
    generations: frozenset[str]
    legacy: dict[str, bytes]
    foreign: tuple[str, ...]


def _ours(dirs: _Dirs, name: str) -> bool:
    try:
        return os.readlink(name, dir_fd=dirs.out) == _link_target(dirs.vm, name)
    except OSError:
        return False


def _legacy_files(dirs: _Dirs) -> dict[str, bytes]:
    """Plain files an older pvdesc wrote, as its plain manifest lists them (hashes checked)."""
    manifest = f"{dirs.vm}.manifest.json"
    raw = _read_plain(dirs.out, manifest)
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
        ok = doc.get("format") == MANIFEST_FORMAT and doc.get("vm") == dirs.vm
        files = doc["files"] if ok else []
        out = {manifest: raw}
        for entry in files:
            name, sha = str(entry["path"]), str(entry["sha256"])
            data = _read_plain(dirs.out, name) if _FILE_RE.fullmatch(name) else None
            if data is not None and hashlib.sha256(data).hexdigest() == sha:
                out[name] = data
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return out if len(out) > 1 else {}


def _same_as(dirs: _Dirs, gen: int | None, name: str) -> bool:
    """A plain file identical to the current generation's (an adoption was interrupted)."""
    if gen is None:
        return False
    mine = _read_plain(dirs.out, name)
    return mine is not None and mine == _read_plain(gen, name)


def _pointer(dirs: _Dirs, store: int, name: str) -> str | None:
    """The generation the pointer ``name`` (``current``, ``previous``) names; None if absent.

    A pointer that is not a symlink to a plain ``g-*`` name, or whose generation
    is not a directory, is not one pvdesc made: refused.
    """
    path = dirs.store_path / name
    try:
        target = os.readlink(name, dir_fd=store)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not a symlink
            raise OutputError("is not a symlink pvdesc made; move it away", str(path)) from None
        raise _cannot(exc, path) from None
    if not _GENERATION_RE.fullmatch(target):
        raise OutputError(
            f"points to {target!r}, not to a generation pvdesc made; move it away", str(path)
        )
    return target


def _generations(dirs: _Dirs, store: int) -> frozenset[str]:
    """Every ``g-*`` entry of the store; one that is not a plain directory is refused."""
    names = set()
    with _at(dirs.store_path):
        entries = os.listdir(store)
    for name in entries:
        if not name.startswith(GENERATION_PREFIX):
            continue
        st = _lstat(store, name)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise _refusal(store, name, dirs.store_path / name, "generation (a directory)")
        names.add(name)
    return frozenset(names)


def _edited(dirs: _Dirs, gen: int) -> str | None:
    """The first file of a generation that differs from its manifest's sha256, or None.

    A file that is missing lost nothing; a manifest that cannot be read is itself edited.
    """
    manifest = f"{dirs.vm}.manifest.json"
    if _lstat(gen, manifest) is None:
        return None
    raw = _read_plain(gen, manifest)
    try:
        doc = json.loads(raw) if raw is not None else None
        entries = [(str(e["path"]), str(e["sha256"])) for e in doc["files"]]  # type: ignore[index]
    except (ValueError, KeyError, TypeError, AttributeError):
        return manifest
    for name, sha in entries:
        if not _FILE_RE.fullmatch(name) or _lstat(gen, name) is None:
            continue
        data = _read_plain(gen, name)
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            return name
    return None


def _state(dirs: _Dirs, new_names: frozenset[str], force: bool) -> _State:
    """Read (never change) what ``DIR`` holds; refuse what pvdesc must not touch."""
    current = previous = None
    gens: frozenset[str] = frozenset()
    gen_fd: int | None = None
    legacy: dict[str, bytes] = {}
    try:
        if dirs.store is not None:
            gens = _generations(dirs, dirs.store)
            current = _pointer(dirs, dirs.store, POINTER)
            previous = _pointer(dirs, dirs.store, PREVIOUS)
            if current is not None:
                gen_fd = _open_dir(dirs.store, dirs.store_path, current, create=False)
            with _at(dirs.store_path / "lock"):
                st = _lstat(dirs.store, "lock")
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise _refusal(dirs.store, "lock", dirs.store_path / "lock", "lock file")
        if current is None:
            legacy = _legacy_files(dirs)
        foreign = []
        for name in sorted(new_names):
            if _lstat(dirs.out, name) is None:
                continue
            if _ours(dirs, name) or name in legacy or _same_as(dirs, gen_fd, name):
                continue
            foreign.append(name)
        if foreign and not force:
            raise OutputError(
                "exists and pvdesc did not write it (it is not one of pvdesc's links, nor listed "
                "with this content by a pvdesc manifest); remove it or pass --force",
                str(dirs.outdir / foreign[0]),
            )
        edited = _edited(dirs, gen_fd) if gen_fd is not None and not force else None
        if edited is not None:
            raise OutputError(
                "was edited after pvdesc wrote it (its sha256 is not the one its manifest "
                "lists); keep your copy elsewhere, or pass --force to replace it",
                str(dirs.outdir / edited),
            )
    except OSError as exc:
        raise _cannot(exc, dirs.store_path) from None
    finally:
        if gen_fd is not None:
            os.close(gen_fd)
    return _State(current, previous, gens, legacy, tuple(foreign))


@contextlib.contextmanager
def _locked(dirs: _Dirs, store: int) -> Iterator[None]:
    path = dirs.store_path / "lock"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open("lock", flags, 0o644, dir_fd=store)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refusal(store, "lock", path, "lock file") from None
        raise _cannot(exc, path) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refusal(store, "lock", path, "lock file")
        with _at(path):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_generation(dirs: _Dirs, store: int, name: str) -> None:
    """Remove a generation through descriptors (``shutil.rmtree`` never follows a link)."""
    with _at(dirs.store_path / name):
        shutil.rmtree(name, dir_fd=store)


def _new_generation(dirs: _Dirs, store: int, files: Mapping[str, bytes]) -> str:
    """Write ``files`` into a new generation; on any failure remove it again, then raise."""
    gen = f"{GENERATION_PREFIX}{secrets.token_hex(8)}"
    path = dirs.store_path / gen
    with _at(path):
        os.mkdir(gen, 0o755, dir_fd=store)
    try:
        fd = _open_dir(store, dirs.store_path, gen, create=False)
        assert fd is not None
        try:
            for name, data in files.items():
                with _at(path / name):
                    _write_in(fd, name, data, 0o444)
            with _at(path):
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(gen, dir_fd=store)
        raise
    return gen


def _symlink_as(dirs: _Dirs, parent: int, target: str, name: str, path: Path) -> None:
    """Make ``name`` in ``parent`` a symlink to ``target``, atomically replacing what is there.

    An error names ``path``, the link being made (never its target).
    """
    tmp = f".{name}.{secrets.token_hex(4)}.pvdesc-tmp"
    with _at(path):
        os.symlink(target, tmp, dir_fd=parent)
        try:
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise


def _point(dirs: _Dirs, store: int, gen: str, old: str | None) -> None:
    """Switch ``current`` to ``gen`` with one rename(2) (``previous`` to ``old`` just before).

    The caller fsyncs the store: once the rename is done, the switch is made.
    """
    tmp = f".{POINTER}-{secrets.token_hex(4)}"
    path = dirs.store_path / POINTER
    with _at(path):
        os.symlink(gen, tmp, dir_fd=store)
    try:
        if old is not None:
            _symlink_as(dirs, store, old, PREVIOUS, dirs.store_path / PREVIOUS)
        with _at(path):
            os.replace(tmp, POINTER, src_dir_fd=store, dst_dir_fd=store)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=store)
        raise


def _link(dirs: _Dirs, name: str) -> None:
    """Make ``DIR/name`` pvdesc's symlink (atomically replacing whatever is there)."""
    _symlink_as(dirs, dirs.out, _link_target(dirs.vm, name), name, dirs.outdir / name)


def _adopt(dirs: _Dirs, store: int, state: _State) -> str:
    """Move an older pvdesc's plain files under a generation without changing what they read."""
    gen = f"{GENERATION_PREFIX}{secrets.token_hex(8)}"
    path = dirs.store_path / gen
    with _at(path):
        os.mkdir(gen, 0o755, dir_fd=store)
    fd = _open_dir(store, dirs.store_path, gen, create=False)
    assert fd is not None
    try:
        for name, data in state.legacy.items():
            with _at(path / name):
                try:
                    os.link(name, name, src_dir_fd=dirs.out, dst_dir_fd=fd, follow_symlinks=False)
                except OSError:
                    _write_in(fd, name, data, 0o444)
        with _at(path):
            os.fsync(fd)
    finally:
        os.close(fd)
    _point(dirs, store, gen, None)
    with _at(dirs.store_path):
        os.fsync(store)
    for name in state.legacy:  # plain file -> symlink to identical content
        _link(dirs, name)
    with _at(dirs.outdir):
        os.fsync(dirs.out)
    return gen


def _tidy(dirs: _Dirs, store: int, keep: set[str] | None) -> None:
    """Remove leftovers of killed builds; and every generation not in ``keep`` (unless None).

    Only pvdesc's own temporary symlinks are unlinked (``unlink`` never follows a
    link); generations are plain directories (:func:`_generations` refused others).
    """
    with _at(dirs.store_path):
        entries = os.listdir(store)
    for name in entries:
        if keep is not None and _GENERATION_RE.fullmatch(name) and name not in keep:
            _remove_generation(dirs, store, name)
        elif name.startswith((f".{POINTER}-", f".{PREVIOUS}.")) and _is_link(store, name):
            with _at(dirs.store_path / name):
                os.unlink(name, dir_fd=store)
    with _at(dirs.outdir):
        entries = os.listdir(dirs.out)
    for name in entries:
        if (
            name.startswith(f".{dirs.vm}.")
            and name.endswith(".pvdesc-tmp")
            and _is_link(dirs.out, name)
        ):
            with _at(dirs.outdir / name):
                os.unlink(name, dir_fd=dirs.out)


def _is_link(parent: int, name: str) -> bool:
    st = _lstat(parent, name)
    return st is not None and stat.S_ISLNK(st.st_mode)


def _gen_names(dirs: _Dirs, store: int, gen: str | None) -> set[str]:
    """The file names in generation ``gen`` (empty if None or gone)."""
    if gen is None:
        return set()
    fd = _open_dir(store, dirs.store_path, gen, create=False)
    if fd is None:
        return set()
    try:
        with _at(dirs.store_path / gen):
            return set(os.listdir(fd))
    finally:
        os.close(fd)


def publish(
    outdir: Path, vm: str, files: Mapping[str, bytes], *, force: bool = False
) -> tuple[Path, ...]:
    """Publish ``files`` (name -> bytes) as VM ``vm``'s outputs in ``outdir``; see the module doc.

    Returns the stable paths written.  Raises :class:`OutputError` for a foreign
    file in the way without ``force``, a hand-edited output without ``force``, a
    link in the store pvdesc did not make, a name that could escape ``outdir``
    (nothing changed in all these cases), or an I/O failure (the new generation is
    removed again; the visible outputs and the kept generations stay as they were).
    """
    if not _VM_RE.fullmatch(vm):
        raise OutputError(f"refusing to publish VM {vm!r}: not a plain name", str(outdir))
    paths = tuple(check_name(outdir, name, vm) for name in files)
    new_names = frozenset(files)
    with _opened(outdir, vm, create=False) as looking:  # refuse before touching anything
        if looking is not None:
            _state(looking, new_names, force)
    with _opened(outdir, vm, create=True) as dirs:
        assert dirs is not None and dirs.store is not None
        store = dirs.store
        with _locked(dirs, store):
            state = _state(dirs, new_names, force)  # again, now that we hold the lock
            # Keep what a reader may be using: current and previous.  A store an older
            # pvdesc made has no `previous`: keep everything until the new one is published.
            kept = {g for g in (state.current, state.previous) if g is not None}
            _tidy(dirs, store, kept if state.previous is not None else None)
            current = state.current
            if current is None and state.legacy:
                current = _adopt(dirs, store, state)
            old_names = _gen_names(dirs, store, current)
            gen = _new_generation(dirs, store, files)
            made: list[str] = []
            try:
                # Every new name, and every plain copy of an old one (an adoption that was
                # interrupted), becomes our link; before the switch it reads the old generation.
                old_fd = (
                    _open_dir(store, dirs.store_path, current, create=False) if current else None
                )
                try:
                    for name in sorted(new_names | old_names):
                        if _ours(dirs, name):
                            continue
                        if name in new_names or _same_as(dirs, old_fd, name):
                            _link(dirs, name)
                            made.append(name)
                finally:
                    if old_fd is not None:
                        os.close(old_fd)
                with _at(outdir):
                    os.fsync(dirs.out)
                _point(dirs, store, gen, current)  # the commit point
            except BaseException:  # not published: remove the new generation and new links
                for name in made:
                    if name not in old_names:
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=dirs.out)
                with contextlib.suppress(OSError):
                    shutil.rmtree(gen, dir_fd=store)
                raise
            with _at(dirs.store_path):
                os.fsync(store)
            # Published.  Names the new generation lacks now dangle (absent); remove them,
            # including any an earlier, killed build left behind; then old generations.
            with _at(outdir):
                entries = sorted(os.listdir(dirs.out))
            for name in entries:
                if name.startswith(f"{vm}.") and name not in new_names and _ours(dirs, name):
                    with _at(outdir / name):
                        os.unlink(name, dir_fd=dirs.out)
            _tidy(dirs, store, {gen} | ({current} if current else set()))
            with _at(outdir):
                os.fsync(dirs.out)
    return paths


def read_outputs(outdir: Path, vm: str) -> dict[str, bytes]:
    """Every current output of ``vm``, from one generation, checked against its manifest.

    This is the consumer side of the guarantee: the files come from the single
    generation ``current`` named when reading began (or, before any build with
    generations, from the plain files), and each must match the sha256 the
    manifest lists.  A build switching generations mid-read makes it try again.
    Raises :class:`OutputError` when the outputs are missing or do not match
    their manifest.
    """
    pointer = outdir / STORE / vm / POINTER
    problem = "no outputs"
    for _ in range(READ_ATTEMPTS):
        try:
            # Plain files of an older pvdesc (no pointer yet) are read where they are.
            gen = pointer.parent / os.readlink(pointer) if pointer.is_symlink() else outdir
            manifest_name = f"{vm}.manifest.json"
            raw = (gen / manifest_name).read_bytes()
            doc = json.loads(raw)
            out = {manifest_name: raw}
            for entry in doc["files"]:
                data = (gen / entry["path"]).read_bytes()
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise OutputError(f"{entry['path']} does not match its manifest", str(outdir))
                out[entry["path"]] = data
            return out
        except FileNotFoundError as exc:
            problem = f"{exc.filename}: missing"
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputError(f"unreadable manifest: {exc}", str(outdir)) from None
    raise OutputError(f"cannot read the outputs of {vm}: {problem}", str(outdir))
