"""The generation store of one VM's outputs: its layout, its names, and reading its state.

::

    DIR/NAME.dtb           -> .pvdesc/NAME/current/NAME.dtb     (symlinks that never change)
    DIR/NAME.manifest.json -> .pvdesc/NAME/current/NAME.manifest.json
    ...
    DIR/.pvdesc/NAME/current -> g-XXXXXXXX                        (the pointer)
    DIR/.pvdesc/NAME/previous -> g-YYYYYYYY                       (the one before, kept)
    DIR/.pvdesc/NAME/g-XXXXXXXX/NAME.dtb, ...                     (a generation, read-only)
    DIR/.pvdesc/NAME/lock                                         (serialises builds of NAME)

:func:`read_state` reads (never changes) what ``DIR`` holds for a VM and refuses
what pvdesc must not touch: a symlinked ``.pvdesc/NAME``, ``lock``, ``current``,
``previous`` or ``g-*``; a pointer that does not name a plain ``g-*`` generation;
a file in the way that pvdesc did not write (not one of its symlinks, not listed
by its manifest with matching content); a generation whose files no longer match
its manifest's sha256 (a hand edit through ``DIR/NAME.dtb``: root ignores the
read-only mode).  Plain files an older pvdesc wrote, listed with their hashes by
a plain ``NAME.manifest.json``, are found for adoption (:func:`legacy_files`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from pvdesc.emit.dirfd import at, cannot, lstat, open_dir, read_plain, refusal
from pvdesc.errors import OutputError

#: The hidden directory, inside the output directory, that holds every VM's generations.
STORE = ".pvdesc"
POINTER = "current"
#: The generation ``current`` named before the last switch, kept for readers mid-switch.
PREVIOUS = "previous"
GENERATION_PREFIX = "g-"
MANIFEST_FORMAT = "pvdesc.manifest/1"
#: VM names (pvdesc.core.model.NAME_RE) and output file names: checked again at write time.
VM_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
FILE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}(\.[a-z0-9-]+)+")
#: Attempts :func:`read_outputs` makes when builds keep switching generations under it.
READ_ATTEMPTS = 5
#: The names pvdesc gives generations; ``current`` and ``previous`` point to nothing else.
GENERATION_RE = re.compile(rf"{GENERATION_PREFIX}[0-9a-f]{{16}}")


def link_target(vm: str, name: str) -> str:
    return f"{STORE}/{vm}/{POINTER}/{name}"


class Dirs:
    """The output directory and VM ``vm``'s store, opened without following links.

    Attributes:
        outdir: ``DIR`` as given (a symlinked ``DIR`` is followed as a whole: the user's choice).
        vm: the VM's name.
        out: a descriptor of ``DIR``.
        store: a descriptor of ``DIR/.pvdesc/NAME``, or None when it does not exist.
    """

    __slots__ = ("out", "outdir", "store", "vm")

    def __init__(self, outdir: Path, vm: str, out: int, store: int | None) -> None:
        self.outdir = outdir
        self.vm = vm
        self.out = out
        self.store = store

    @property
    def store_path(self) -> Path:
        return self.outdir / STORE / self.vm

    def close(self) -> None:
        for fd in (self.out, self.store):
            if fd is not None:
                os.close(fd)


@contextlib.contextmanager
def opened(outdir: Path, vm: str, *, create: bool) -> Iterator[Dirs | None]:
    """:class:`Dirs` for ``outdir`` (None when it does not exist and ``create`` is false).

    Every directory below ``DIR`` is opened relative to its parent's descriptor
    with ``O_NOFOLLOW``: a symlinked ``.pvdesc`` or ``.pvdesc/NAME`` is refused,
    never followed, so nothing pvdesc writes or deletes can be reached through it.
    """
    if create:
        with at(outdir):
            os.makedirs(outdir, exist_ok=True)
    try:
        out = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise OutputError("not a directory", str(outdir)) from None
    except OSError as exc:
        if exc.errno != errno.ENOENT or create:
            raise cannot(exc, outdir) from None
        out = -1
    if out < 0:
        yield None
        return
    dirs = Dirs(outdir, vm, out, None)
    try:
        top = open_dir(out, outdir, STORE, create=create)
        if top is not None:
            try:
                dirs.store = open_dir(top, outdir / STORE, vm, create=create)
            finally:
                os.close(top)
        yield dirs
    finally:
        dirs.close()


class State(NamedTuple):
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


def ours(dirs: Dirs, name: str) -> bool:
    try:
        return os.readlink(name, dir_fd=dirs.out) == link_target(dirs.vm, name)
    except OSError:
        return False


def legacy_files(dirs: Dirs) -> dict[str, bytes]:
    """Plain files an older pvdesc wrote, as its plain manifest lists them (hashes checked)."""
    manifest = f"{dirs.vm}.manifest.json"
    raw = read_plain(dirs.out, manifest)
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
        ok = doc.get("format") == MANIFEST_FORMAT and doc.get("vm") == dirs.vm
        files = doc["files"] if ok else []
        out = {manifest: raw}
        for entry in files:
            name, sha = str(entry["path"]), str(entry["sha256"])
            data = read_plain(dirs.out, name) if FILE_RE.fullmatch(name) else None
            if data is not None and hashlib.sha256(data).hexdigest() == sha:
                out[name] = data
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return out if len(out) > 1 else {}


def same_as(dirs: Dirs, gen: int | None, name: str) -> bool:
    """A plain file identical to the current generation's (an adoption was interrupted)."""
    if gen is None:
        return False
    mine = read_plain(dirs.out, name)
    return mine is not None and mine == read_plain(gen, name)


def pointer(dirs: Dirs, store: int, name: str) -> str | None:
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
        raise cannot(exc, path) from None
    if not GENERATION_RE.fullmatch(target):
        raise OutputError(
            f"points to {target!r}, not to a generation pvdesc made; move it away", str(path)
        )
    return target


def generations(dirs: Dirs, store: int) -> frozenset[str]:
    """Every ``g-*`` entry of the store; one that is not a plain directory is refused."""
    names = set()
    with at(dirs.store_path):
        entries = os.listdir(store)
    for name in entries:
        if not name.startswith(GENERATION_PREFIX):
            continue
        st = lstat(store, name)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise refusal(store, name, dirs.store_path / name, "generation (a directory)")
        names.add(name)
    return frozenset(names)


def edited_file(dirs: Dirs, gen: int) -> str | None:
    """The first file of a generation that differs from its manifest's sha256, or None.

    A file that is missing lost nothing; a manifest that cannot be read is itself edited.
    """
    manifest = f"{dirs.vm}.manifest.json"
    if lstat(gen, manifest) is None:
        return None
    raw = read_plain(gen, manifest)
    try:
        doc = json.loads(raw) if raw is not None else None
        entries = [(str(e["path"]), str(e["sha256"])) for e in doc["files"]]  # type: ignore[index]
    except (ValueError, KeyError, TypeError, AttributeError):
        return manifest
    for name, sha in entries:
        if not FILE_RE.fullmatch(name) or lstat(gen, name) is None:
            continue
        data = read_plain(gen, name)
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            return name
    return None


def has_lock(dirs: Dirs) -> bool:
    """True when the store exists and holds its lock file (so locking creates nothing)."""
    st = lstat(dirs.store, "lock") if dirs.store is not None else None
    return st is not None and stat.S_ISREG(st.st_mode)


def read_state(dirs: Dirs, new_names: frozenset[str], force: bool) -> State:
    """Read (never change) what ``DIR`` holds; refuse what pvdesc must not touch."""
    current = previous = None
    gens: frozenset[str] = frozenset()
    gen_fd: int | None = None
    legacy: dict[str, bytes] = {}
    try:
        if dirs.store is not None:
            gens = generations(dirs, dirs.store)
            current = pointer(dirs, dirs.store, POINTER)
            previous = pointer(dirs, dirs.store, PREVIOUS)
            if current is not None:
                gen_fd = open_dir(dirs.store, dirs.store_path, current, create=False)
            with at(dirs.store_path / "lock"):
                st = lstat(dirs.store, "lock")
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise refusal(dirs.store, "lock", dirs.store_path / "lock", "lock file")
        if current is None:
            legacy = legacy_files(dirs)
        foreign = []
        for name in sorted(new_names):
            if lstat(dirs.out, name) is None:
                continue
            if ours(dirs, name) or name in legacy or same_as(dirs, gen_fd, name):
                continue
            foreign.append(name)
        if foreign and not force:
            raise OutputError(
                "exists and pvdesc did not write it (it is not one of pvdesc's links, nor listed "
                "with this content by a pvdesc manifest); remove it or pass --force",
                str(dirs.outdir / foreign[0]),
            )
        edited = edited_file(dirs, gen_fd) if gen_fd is not None and not force else None
        if edited is not None:
            raise OutputError(
                "was edited after pvdesc wrote it (its sha256 is not the one its manifest "
                "lists); keep your copy elsewhere, or pass --force to replace it",
                str(dirs.outdir / edited),
            )
    except OSError as exc:
        raise cannot(exc, dirs.store_path) from None
    finally:
        if gen_fd is not None:
            os.close(gen_fd)
    return State(current, previous, gens, legacy, tuple(foreign))


def gen_names(dirs: Dirs, store: int, gen: str | None) -> set[str]:
    """The file names in generation ``gen`` (empty if None or gone)."""
    if gen is None:
        return set()
    fd = open_dir(store, dirs.store_path, gen, create=False)
    if fd is None:
        return set()
    try:
        with at(dirs.store_path / gen):
            return set(os.listdir(fd))
    finally:
        os.close(fd)


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
