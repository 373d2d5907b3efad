"""Publish a build's files so that a reader sees all the old outputs or all the new ones.

POSIX renames one directory entry atomically, never several, so the files of a
build cannot be swapped in one step by renaming them one by one: a kill between
two renames would leave a new DTB beside an old hypervisor config, exactly the
mismatch pvdesc exists to prevent.  Instead there is a single pointer.
A symlink ``DIR/NAME.*`` per output into ``.pvdesc/NAME/current``, which names
one read-only generation directory (the layout: :mod:`pvdesc.emit.store`).

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
:func:`staging` is the same publish with the files handed over one by one while
the caller still works (``pvdesc build`` while iasl runs); the generation they go
into stays invisible until the same switch.

A failed build (a full disk, a signal) removes its unpublished generation; a
generation older than ``previous`` is deleted only after the new one is
published, so a build that fails costs nothing that was there.

Nothing under ``DIR`` is reached through a link pvdesc did not make
(:mod:`pvdesc.emit.dirfd`); generations are removed with
``shutil.rmtree(dir_fd=...)``, which never follows a link.  (``DIR`` itself
may be a symlink: it is the user's choice.)

A consumer that reads several files reads them from one generation: resolve
``DIR/.pvdesc/NAME/current`` once, or read through the symlinks and check every
file against the manifest's sha256 (:func:`pvdesc.emit.store.read_outputs`, also
reachable here, does both), retrying if they disagree because a build switched
generations mid-read.

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
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from pvdesc.emit.dirfd import (
    at,
    cannot,
    fsync_dir,
    is_link,
    open_dir,
    random_hex,
    refusal,
    symlink_as,
    write_in,
    write_new,
)
from pvdesc.emit.store import (
    FILE_RE,
    GENERATION_PREFIX,
    GENERATION_RE,
    POINTER,
    PREVIOUS,
    VM_RE,
    Dirs,
    State,
    gen_names,
    has_lock,
    link_target,
    opened,
    ours,
    read_state,
    same_as,
)
from pvdesc.emit.store import read_outputs as read_outputs  # the consumer's side, documented above
from pvdesc.errors import OutputError


def check_name(outdir: Path, name: str, vm: str | None = None) -> Path:
    """The path of output ``name`` in ``outdir``, refusing any name that could leave it.

    Defence in depth: descriptions already restrict ``name`` to
    ``[a-z0-9][a-z0-9-]*``; this refuses, at the last moment, separators, ``..``,
    hidden names and NUL bytes.  A name of only ``[a-z0-9.-]`` that starts with a
    letter or digit is one entry of ``outdir`` itself, so its parent is ``outdir``
    (a symlinked ``outdir`` is followed as a whole); no resolving is needed.
    """
    if (
        not FILE_RE.fullmatch(name)
        or name != Path(name).name
        or (vm is not None and not name.startswith(f"{vm}."))
    ):
        raise OutputError(f"refusing to write {name!r}: not a plain output file name", str(outdir))
    return outdir / name


def write_file_atomic(path: Path, data: bytes) -> None:
    """Replace one file atomically: a temporary file beside it, fsync, rename, fsync the directory.

    For single files (``pvdesc map --svg/--html``): a reader sees the old file
    or the new one, never a part.
    """
    tmp = path.parent / f".{path.name}.{random_hex(4)}.tmp"
    try:
        write_new(tmp, data)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(dirs: Dirs, store: int) -> Iterator[None]:
    path = dirs.store_path / "lock"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open("lock", flags, 0o644, dir_fd=store)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refusal(store, "lock", path, "lock file") from None
        raise cannot(exc, path) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refusal(store, "lock", path, "lock file")
        with at(path):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_generation(dirs: Dirs, store: int, name: str) -> None:
    """Remove a generation through descriptors (``shutil.rmtree`` never follows a link)."""
    with at(dirs.store_path / name):
        shutil.rmtree(name, dir_fd=store)


@contextlib.contextmanager
def _new_generation(
    dirs: Dirs, store: int, names: frozenset[str]
) -> Iterator[tuple[str, Callable[[str, bytes], None]]]:
    """A new generation and a function writing one of ``names`` into it (each once, fsynced).

    Leaving the block normally checks that every name was written and fsyncs the
    generation; on any failure (here or in the block) the generation is removed, then
    the error raised.
    """
    gen = f"{GENERATION_PREFIX}{random_hex(8)}"
    path = dirs.store_path / gen
    with at(path):
        os.mkdir(gen, 0o755, dir_fd=store)
    try:
        fd = open_dir(store, dirs.store_path, gen, create=False)
        assert fd is not None
        written: set[str] = set()

        def put(name: str, data: bytes) -> None:
            if name not in names or name in written:
                raise OutputError(f"internal: {name!r} is not a file still to write", str(path))
            with at(path / name):
                write_in(fd, name, data, 0o444)
            written.add(name)

        try:
            yield gen, put
            _all_put(names, written, path)
            with at(path):
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(gen, dir_fd=store)
        raise


def _all_put(names: frozenset[str], put: Iterable[str], where: Path) -> None:
    if missing := names.difference(put):
        raise OutputError(f"internal: never written: {', '.join(sorted(missing))}", str(where))


def _point(dirs: Dirs, store: int, gen: str, old: str | None) -> None:
    """Switch ``current`` to ``gen`` with one rename(2) (``previous`` to ``old`` just before).

    The caller fsyncs the store: once the rename is done, the switch is made.
    """
    tmp = f".{POINTER}-{random_hex(4)}"
    path = dirs.store_path / POINTER
    with at(path):
        os.symlink(gen, tmp, dir_fd=store)
    try:
        if old is not None:
            symlink_as(store, old, PREVIOUS, dirs.store_path / PREVIOUS)
        with at(path):
            os.replace(tmp, POINTER, src_dir_fd=store, dst_dir_fd=store)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=store)
        raise


def _link(dirs: Dirs, name: str) -> None:
    """Make ``DIR/name`` pvdesc's symlink (atomically replacing whatever is there)."""
    symlink_as(dirs.out, link_target(dirs.vm, name), name, dirs.outdir / name)


def _adopt(dirs: Dirs, store: int, state: State) -> str:
    """Move an older pvdesc's plain files under a generation without changing what they read."""
    gen = f"{GENERATION_PREFIX}{random_hex(8)}"
    path = dirs.store_path / gen
    with at(path):
        os.mkdir(gen, 0o755, dir_fd=store)
    fd = open_dir(store, dirs.store_path, gen, create=False)
    assert fd is not None
    try:
        for name, data in state.legacy.items():
            with at(path / name):
                try:
                    os.link(name, name, src_dir_fd=dirs.out, dst_dir_fd=fd, follow_symlinks=False)
                except OSError:
                    write_in(fd, name, data, 0o444)
        with at(path):
            os.fsync(fd)
    finally:
        os.close(fd)
    _point(dirs, store, gen, None)
    with at(dirs.store_path):
        os.fsync(store)
    for name in state.legacy:  # plain file -> symlink to identical content
        _link(dirs, name)
    with at(dirs.outdir):
        os.fsync(dirs.out)
    return gen


def _tidy(dirs: Dirs, store: int, keep: set[str] | None) -> None:
    """Remove leftovers of killed builds; and every generation not in ``keep`` (unless None).

    Only pvdesc's own temporary symlinks are unlinked (``unlink`` never follows a
    link); generations are plain directories (:func:`generations` refused others).
    """
    with at(dirs.store_path):
        entries = os.listdir(store)
    for name in entries:
        if keep is not None and GENERATION_RE.fullmatch(name) and name not in keep:
            _remove_generation(dirs, store, name)
        elif name.startswith((f".{POINTER}-", f".{PREVIOUS}.")) and is_link(store, name):
            with at(dirs.store_path / name):
                os.unlink(name, dir_fd=store)
    with at(dirs.outdir):
        entries = os.listdir(dirs.out)
    for name in entries:
        if (
            name.startswith(f".{dirs.vm}.")
            and name.endswith(".pvdesc-tmp")
            and is_link(dirs.out, name)
        ):
            with at(dirs.outdir / name):
                os.unlink(name, dir_fd=dirs.out)


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
    paths = _checked(outdir, vm, files)
    with staging(outdir, vm, files, force=force) as put:
        for name, data in files.items():
            put(name, data)
    return paths


def _checked(outdir: Path, vm: str, names: Iterable[str]) -> tuple[Path, ...]:
    """The paths of ``names``, refusing a VM or file name that could leave ``outdir``."""
    if not VM_RE.fullmatch(vm):
        raise OutputError(f"refusing to publish VM {vm!r}: not a plain name", str(outdir))
    return tuple(check_name(outdir, name, vm) for name in names)


@contextlib.contextmanager
def staging(
    outdir: Path, vm: str, names: Iterable[str], *, force: bool = False
) -> Iterator[Callable[[str, bytes], None]]:
    """:func:`publish` with the files handed over one by one: ``put(name, data)``, each name once.

    What :func:`publish` refuses is refused on entry; leaving the block publishes the files
    as :func:`publish` does; an error in it publishes nothing, leaves nothing.  A rebuild
    (``outdir`` holds VM ``vm``'s store) writes and fsyncs each file into the new, still
    invisible generation when it is put, overlapping the caller's work (``pvdesc build``
    puts what it has while iasl runs).  A first build keeps the files in memory until the
    block ends: a failed build leaves no directory it created.
    """
    new_names = frozenset(names)
    _checked(outdir, vm, sorted(new_names))
    with opened(outdir, vm, create=False) as looking:  # refuse before touching anything
        rebuild = looking is not None and looking.store is not None
        # (a rebuild whose lock exists touches nothing before _generation checks, locked)
        if looking is not None and not (rebuild and has_lock(looking)):
            read_state(looking, new_names, force)
    if rebuild:
        with _generation(outdir, vm, new_names, force) as put:
            yield put
        return
    files: dict[str, bytes] = {}

    def keep(name: str, data: bytes) -> None:
        if name not in new_names or name in files:
            raise OutputError(f"internal: {name!r} is not a file still to write", str(outdir))
        files[name] = data

    yield keep
    _all_put(new_names, files.keys(), outdir)
    with _generation(outdir, vm, new_names, force) as put:
        for name, data in files.items():
            put(name, data)


@contextlib.contextmanager
def _generation(
    outdir: Path, vm: str, new_names: frozenset[str], force: bool
) -> Iterator[Callable[[str, bytes], None]]:
    """Lock the store, write a new generation while the block puts files, then switch to it."""
    with opened(outdir, vm, create=True) as dirs:
        assert dirs is not None and dirs.store is not None
        store = dirs.store
        with _locked(dirs, store):
            state = read_state(dirs, new_names, force)  # again, now that we hold the lock
            # Keep what a reader may be using: current and previous.  A store an older
            # pvdesc made has no `previous`: keep everything until the new one is published.
            kept = {g for g in (state.current, state.previous) if g is not None}
            _tidy(dirs, store, kept if state.previous is not None else None)
            current = state.current
            if current is None and state.legacy:
                current = _adopt(dirs, store, state)
            old_names = gen_names(dirs, store, current)
            with _new_generation(dirs, store, new_names) as (gen, put):
                yield put
            made: list[str] = []
            try:
                # Every new name, and every plain copy of an old one (an adoption that was
                # interrupted), becomes our link; before the switch it reads the old generation.
                old_fd = (
                    open_dir(store, dirs.store_path, current, create=False) if current else None
                )
                try:
                    for name in sorted(new_names | old_names):
                        if ours(dirs, name):
                            continue
                        if name in new_names or same_as(dirs, old_fd, name):
                            _link(dirs, name)
                            made.append(name)
                finally:
                    if old_fd is not None:
                        os.close(old_fd)
                with at(outdir):
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
            with at(dirs.store_path):
                os.fsync(store)
            # Published.  Names the new generation lacks now dangle (absent); remove them,
            # including any an earlier, killed build left behind; then old generations.
            with at(outdir):
                entries = sorted(os.listdir(dirs.out))
            for name in entries:
                if name.startswith(f"{vm}.") and name not in new_names and ours(dirs, name):
                    with at(outdir / name):
                        os.unlink(name, dir_fd=dirs.out)
            _tidy(dirs, store, {gen} | ({current} if current else set()))
            with at(outdir):
                os.fsync(dirs.out)
