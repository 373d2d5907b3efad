"""Render text outputs from ``templates/`` with Jinja2 (strict: an undefined name is an error).

Compiled templates are kept in Jinja2's own bytecode cache, in
``$XDG_CACHE_HOME/pvdesc/jinja2`` (default ``~/.cache/pvdesc/jinja2``): compiling the
seven templates of a build costs ~25 ms in every fresh process, loading them ~1 ms
(bench/run).  Jinja2 keys each entry on the template's name and the hash of its
source and checks its own and Python's version, so an entry is never used for
another template text.  The cache is used only in a directory the user owns that
no one else can write; set ``PVDESC_NO_CACHE=1`` to never read or write it.
"""

from __future__ import annotations

import os
import stat
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from pvdesc.model import human


def hexa(value: int, width: int = 0) -> str:
    """``0x``-prefixed lowercase hex, zero-padded to ``width`` digits."""
    return f"{value:#0{width + 2}x}" if width else f"{value:#x}"


def cache_dir() -> Path:
    """Where compiled templates are cached (see the module docstring)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pvdesc" / "jinja2"


def bytecode_cache(env: dict[str, str] | None = None) -> jinja2.BytecodeCache | None:
    """Jinja2's file bytecode cache in :func:`cache_dir`, or ``None`` when it is off or unsafe.

    Unsafe: the directory cannot be created, is not a directory, is owned by
    someone else, or is writable by group or others (a cache entry is code).
    """
    environ = os.environ if env is None else env
    if environ.get("PVDESC_NO_CACHE"):
        return None
    directory = cache_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = directory.lstat()
    except (OSError, RuntimeError):  # RuntimeError: Path.home() without a home
        return None
    private = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) == 0
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or not private:
        return None
    return jinja2.FileSystemBytecodeCache(str(directory))


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pvdesc", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # SVG/HTML templates (``*.svg.j2``, ``*.html.j2``) escape every value; text ones do not.
        autoescape=jinja2.select_autoescape(
            ("svg.j2", "html.j2"), default_for_string=False, default=False
        ),
        bytecode_cache=bytecode_cache(),
    )
    env.filters["hex"] = hexa
    env.filters["human"] = human
    return env


def render(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` with ``context``."""
    return environment().get_template(name).render(**context)
