"""Render text outputs from ``templates/`` with Jinja2 (strict: an undefined name is an error)."""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2

from pvdesc import profiles
from pvdesc.model import human


def hexa(value: int, width: int = 0) -> str:
    """``0x``-prefixed lowercase hex, zero-padded to ``width`` digits."""
    return f"{value:#0{width + 2}x}" if width else f"{value:#x}"


def rust_hex(value: int, width: int = 0) -> str:
    """A Rust hex literal in groups of four digits (``0x4000_0000``), zero-padded to ``width``.

    Sixteen digits (``width=16``) keep every entry of a table wider than rustfmt's
    ``short_array_element_width_threshold`` (10), so rustfmt lays the table out one
    entry per line, as pvdesc writes it, whatever the addresses.
    """
    if width:  # ``_`` grouping counts toward the width: 16 digits take 19 characters
        return "0x" + format(value, f"0{width + (width - 1) // 4}_x")
    return "0x" + format(value, "_x")


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
    )
    env.filters["hex"] = hexa
    env.filters["rust_hex"] = rust_hex
    env.globals["vmm_model"] = profiles.model_text
    env.filters["human"] = human
    return env


def render(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` with ``context``."""
    return environment().get_template(name).render(**context)
