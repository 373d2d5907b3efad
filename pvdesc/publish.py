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

A consumer that reads several files reads them from one generation: resolve
``DIR/.pvdesc/NAME/current`` once, or read through the symlinks and check every
file against the manifest's sha256 (:func:`read_outputs` does both), retrying if
they disagree because a build switched generations mid-read.

Outputs written by a pvdesc before this layout (plain files listed, with their
hashes, by a plain ``NAME.manifest.json``) are adopted: hard-linked into a
generation first, so the switch from plain files to symlinks is atomic too.  A
file pvdesc did not write (not one of its symlinks, not listed by its manifest
with matching content) is never overwritten unless ``force``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pvdesc.errors import OutputError

#: The hidden directory, inside the output directory, that holds every VM's generations.
STORE = ".pvdesc"
POINTER = "current"
GENERATION_PREFIX = "g-"
MANIFEST_FORMAT = "pvdesc.manifest/1"
#: VM names (pvdesc.model.NAME_RE) and output file names: checked again at write time.
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


def _create(path: Path, data: bytes, mode: int = 0o644) -> int:
    """Create ``path`` (it must not exist) and write ``data``; the open descriptor, not fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync it."""
    fd = _create(path, data, mode)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_all(fds: Sequence[int]) -> None:
    """fsync every descriptor in ``fds``, all at once; return when every one is durable.

    One fsync after another waits for one journal commit after another (ext4: 2-3 ms
    each on this project's machines, ten files to a build); fsyncs in flight together
    are committed together (jbd2 joins them into one transaction).  The guarantee is
    the same as fsyncing them in turn: this returns only after every fsync returned,
    and raises the first error any of them met.
    """
    errors: list[OSError] = []

    def one(fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(fd,)) for fd in fds[1:]]
    for thread in threads:
        thread.start()
    if fds:
        one(fds[0])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


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


def _remove_tree(path: Path) -> None:
    """Remove a generation (files and directories only; never follows symlinks)."""
    if path.is_symlink() or not path.is_dir():
        os.unlink(path)
        return
    for child in path.iterdir():
        _remove_tree(child)
    os.rmdir(path)


def _link_target(vm: str, name: str) -> str:
    return f"{STORE}/{vm}/{POINTER}/{name}"


@dataclass(frozen=True)
class _State:
    """What an output directory holds for one VM before a publish.

    Attributes:
        store: ``DIR/.pvdesc/NAME``.
        current: the generation ``current`` points to, or ``None``.
        legacy: plain files (name -> bytes) an older pvdesc wrote, to adopt.
        foreign: stable names in the way that pvdesc did not write.
    """

    store: Path
    current: Path | None
    legacy: dict[str, bytes]
    foreign: tuple[str, ...]


def _ours(outdir: Path, vm: str, name: str) -> bool:
    path = outdir / name
    return path.is_symlink() and os.readlink(path) == _link_target(vm, name)


def _legacy_files(outdir: Path, vm: str) -> dict[str, bytes]:
    """Plain files an older pvdesc wrote, as its plain manifest lists them (hashes checked)."""
    manifest = outdir / f"{vm}.manifest.json"
    if manifest.is_symlink() or not manifest.is_file():
        return {}
    try:
        raw = manifest.read_bytes()
        doc = json.loads(raw)
        files = doc["files"] if doc.get("format") == MANIFEST_FORMAT and doc.get("vm") == vm else []
        out = {manifest.name: raw}
        for entry in files:
            name, sha = str(entry["path"]), str(entry["sha256"])
            path = outdir / name
            if not _FILE_RE.fullmatch(name) or path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == sha:
                out[name] = data
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return out if len(out) > 1 else {}


def _same_as(path: Path, gen: Path | None, name: str) -> bool:
    """A plain file identical to the current generation's (an adoption was interrupted)."""
    if gen is None or path.is_symlink() or not path.is_file():
        return False
    try:
        return (gen / name).read_bytes() == path.read_bytes()
    except OSError:
        return False


def _state(outdir: Path, vm: str, new_names: frozenset[str], force: bool) -> _State:
    """Read (never change) what ``outdir`` holds; refuse what pvdesc must not touch."""
    if outdir.exists() and not outdir.is_dir():
        raise OutputError("not a directory", str(outdir))
    top = outdir / STORE
    if top.is_symlink() or (top.exists() and not top.is_dir()):
        raise OutputError(f"{top} is not a directory pvdesc made; move it away", str(top))
    store = top / vm
    pointer = store / POINTER
    current: Path | None = None
    legacy: dict[str, bytes] = {}
    if pointer.is_symlink():
        current = store / os.readlink(pointer)
    elif pointer.exists():
        raise OutputError(f"{pointer} is not a symlink pvdesc made; move it away", str(pointer))
    else:
        legacy = _legacy_files(outdir, vm)
    foreign = []
    for name in sorted(new_names):
        path = outdir / name
        if not (path.is_symlink() or path.exists()):
            continue
        if _ours(outdir, vm, name) or name in legacy or _same_as(path, current, name):
            continue
        foreign.append(name)
    if foreign and not force:
        raise OutputError(
            "exists and pvdesc did not write it (it is not one of pvdesc's links, nor listed "
            "with this content by a pvdesc manifest); remove it or pass --force",
            str(outdir / foreign[0]),
        )
    return _State(store, current, legacy, tuple(foreign))


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    fd = os.open(store / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _new_generation(store: Path, files: Mapping[str, bytes]) -> Path:
    gen = store / f"{GENERATION_PREFIX}{secrets.token_hex(8)}"
    os.mkdir(gen, 0o755)
    fds: list[int] = []
    try:
        for name, data in files.items():
            fds.append(_create(gen / name, data, 0o444))
        fds.append(os.open(gen, os.O_RDONLY | os.O_DIRECTORY))
        # Every file's data and the directory's entries are durable before this returns,
        # so before the caller switches ``current`` to ``gen`` (publish's commit point).
        _fsync_all(fds)
    finally:
        for fd in fds:
            os.close(fd)
    return gen


def _point(store: Path, gen: Path) -> None:
    """Switch ``current`` to ``gen`` with one rename(2), then make it durable."""
    tmp = store / f".{POINTER}-{secrets.token_hex(4)}"
    os.symlink(gen.name, tmp)
    os.replace(tmp, store / POINTER)
    _fsync_dir(store)


def _link(outdir: Path, vm: str, name: str) -> None:
    """Make ``DIR/name`` pvdesc's symlink (atomically replacing whatever is there)."""
    tmp = outdir / f".{name}.{secrets.token_hex(4)}.pvdesc-tmp"
    os.symlink(_link_target(vm, name), tmp)
    os.replace(tmp, outdir / name)


def _adopt(outdir: Path, vm: str, state: _State) -> Path:
    """Move an older pvdesc's plain files under a generation without changing what they read."""
    gen = state.store / f"{GENERATION_PREFIX}{secrets.token_hex(8)}"
    os.mkdir(gen, 0o755)
    for name, data in state.legacy.items():
        try:
            os.link(outdir / name, gen / name)
        except OSError:
            _write_new(gen / name, data, 0o444)
    _fsync_dir(gen)
    _point(state.store, gen)
    for name in state.legacy:  # plain file -> symlink to identical content
        _link(outdir, vm, name)
    _fsync_dir(outdir)
    return gen


def _tidy(outdir: Path, vm: str, store: Path, keep: set[str]) -> None:
    """Remove leftovers of killed builds and generations older than the previous one."""
    for entry in store.iterdir():
        if entry.name.startswith(GENERATION_PREFIX) and entry.name not in keep:
            _remove_tree(entry)
        elif entry.name.startswith(f".{POINTER}-"):
            os.unlink(entry)
    for entry in outdir.iterdir():
        if entry.name.startswith(f".{vm}.") and entry.name.endswith(".pvdesc-tmp"):
            os.unlink(entry)


def publish(
    outdir: Path, vm: str, files: Mapping[str, bytes], *, force: bool = False
) -> tuple[Path, ...]:
    """Publish ``files`` (name -> bytes) as VM ``vm``'s outputs in ``outdir``; see the module doc.

    Returns the stable paths written.  Raises :class:`OutputError` (nothing
    changed) for a foreign file in the way without ``force``, a name that could
    escape ``outdir``, or an I/O failure.
    """
    if not _VM_RE.fullmatch(vm):
        raise OutputError(f"refusing to publish VM {vm!r}: not a plain name", str(outdir))
    paths = tuple(check_name(outdir, name, vm) for name in files)
    new_names = frozenset(files)
    _state(outdir, vm, new_names, force)  # refuse before touching anything
    try:
        os.makedirs(outdir / STORE / vm, exist_ok=True)
        store = outdir / STORE / vm
        with _locked(store):
            state = _state(outdir, vm, new_names, force)  # again, now that we hold the lock
            keep = {state.current.name} if state.current is not None else set()
            _tidy(outdir, vm, store, keep)
            current = state.current
            if current is None and state.legacy:
                current = _adopt(outdir, vm, state)
                keep = {current.name}
            gen = _new_generation(store, files)
            # Every new name, and every plain copy of an old one (an adoption that was
            # interrupted), becomes our link; before the switch it reads the old generation.
            old_names = (
                {p.name for p in current.iterdir()} if current and current.is_dir() else set()
            )
            for name in sorted(new_names | old_names):
                if _ours(outdir, vm, name):
                    continue
                if name in new_names or _same_as(outdir / name, current, name):
                    _link(outdir, vm, name)
            _fsync_dir(outdir)
            _point(store, gen)  # the commit point
            # Names the new generation lacks now dangle (absent); remove them, including
            # any an earlier, killed build left behind.
            for entry in sorted(outdir.iterdir()):
                name = entry.name
                if name.startswith(f"{vm}.") and name not in new_names and _ours(outdir, vm, name):
                    os.unlink(entry)
            _tidy(outdir, vm, store, keep | {gen.name})
            _fsync_dir(outdir)
    except OSError as exc:
        where = exc.filename if isinstance(exc.filename, str) else str(outdir)
        raise OutputError(f"cannot write outputs: {exc.strerror}", where) from None
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
