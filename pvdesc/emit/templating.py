"""Render text outputs from ``templates/``: each template runs as the Python module made from it.

The templates in ``templates/*.j2`` are the one source of truth, written in Jinja2's
syntax.  Importing Jinja2 and compiling a template cost tens of milliseconds of
every ``pvdesc build``, so ``scripts/generate-compiled`` translates each template,
when the package is built, into a plain module of :mod:`pvdesc.emit.templates_compiled`
with one ``render(context)`` function (:mod:`pvdesc.emit.templategen` does the
translation and refuses any construct it cannot render exactly as Jinja2 does).
Jinja2 is not needed to run pvdesc: the generated module is what renders, and
``tests/unit/test_templating.py`` fails while a module is not what the generator
writes for the current template, and compares its output with Jinja2's.

This module holds what the generated code calls: name, attribute and item look-ups
with Jinja2's rules (an attribute first for ``a.b``, an item first for ``a[b]``; a
missing one is an error, like Jinja2's ``StrictUndefined``), and the filters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pvdesc.core.units import human
from pvdesc.description import profiles

#: The package of generated template modules, and the script that writes it.
COMPILED_PACKAGE = "pvdesc.emit.templates_compiled"
GENERATOR = "scripts/generate-compiled"
#: Jinja2 options the templates are written for (part of each generated module's key).
OPTIONS: dict[str, bool] = {
    "keep_trailing_newline": True,
    "trim_blocks": True,
    "lstrip_blocks": True,
}
#: Templates whose values are HTML-escaped (SVG and HTML); text ones are not.
ESCAPED = ("svg.j2", "html.j2")


class UndefinedError(Exception):
    """A template used a name, attribute or item its context lacks (a bug, not bad input)."""


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


#: Names every template sees unless its context has them too.
GLOBALS: dict[str, Any] = {"range": range, "vmm_model": profiles.model_text}


def _soft_str(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def f_format(value: Any, *args: Any) -> str:
    """Jinja2's ``format``: printf-style ``value % args``."""
    return _soft_str(value) % args


def f_int(value: Any, default: int = 0, base: int = 10) -> int:
    """Jinja2's ``int``: ``"42.23"`` gives 42; what is not a number gives ``default``."""
    try:
        if isinstance(value, str):
            return int(value, base)
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError, OverflowError):
            return default


def f_round(value: float, precision: int = 0) -> float:
    """Jinja2's ``round`` (its default method, ``common``): Python's ``round``."""
    return round(value, precision)


def f_join(value: Any, separator: Any = "") -> str:
    """Jinja2's ``join`` in a template that escapes nothing."""
    return str(separator).join(map(str, value))


def f_upper(value: Any) -> str:
    """Jinja2's ``upper``."""
    return _soft_str(value).upper()


#: Every filter the templates may use, by name; ``templategen`` refuses any other.
FILTERS: dict[str, Callable[..., Any]] = {
    "format": f_format,
    "int": f_int,
    "round": f_round,
    "join": f_join,
    "upper": f_upper,
    "length": len,
    "hex": hexa,
    "rust_hex": rust_hex,
    "human": human,
}


def lookup(context: Mapping[str, Any], name: str) -> Any:
    """``name`` in the template: the context's, else a global; else an error."""
    try:
        return context[name]
    except KeyError:
        pass
    try:
        return GLOBALS[name]
    except KeyError:
        raise UndefinedError(f"{name!r} is undefined") from None


def attr(obj: Any, name: str) -> Any:
    """``obj.name`` in the template: the attribute, else the item ``obj[name]``."""
    try:
        return getattr(obj, name)
    except AttributeError:
        pass
    try:
        return obj[name]
    except (TypeError, LookupError, AttributeError):
        raise UndefinedError(f"{type(obj).__name__} object has no attribute {name!r}") from None


def item(obj: Any, key: Any) -> Any:
    """``obj[key]`` in the template: the item, else (a string key) the attribute."""
    try:
        return obj[key]
    except (AttributeError, TypeError, LookupError):
        if isinstance(key, str):
            try:
                return getattr(obj, key)
            except AttributeError:
                pass
        raise UndefinedError(f"{type(obj).__name__} object has no item {key!r}") from None


class Missing:
    """A name the template sets on some paths only, read where it was not set.

    Any use of its value (text, truth, iteration, comparison, an attribute) is an
    error, as with Jinja2's ``StrictUndefined``; ``x is none`` is false, as there.

    Attributes:
        name: the name the template read.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _fail(self, *_args: Any) -> Any:
        raise UndefinedError(f"{self.name!r} is undefined")

    __str__ = __bool__ = __iter__ = __len__ = __eq__ = __ne__ = __contains__ = _fail
    __lt__ = __le__ = __gt__ = __ge__ = __add__ = __radd__ = __sub__ = __rsub__ = _fail
    __mul__ = __rmul__ = __truediv__ = __floordiv__ = __mod__ = __neg__ = __call__ = _fail
    __getitem__ = __format__ = __int__ = __float__ = __index__ = _fail
    __hash__ = None  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return self._fail()


def lookup_or_missing(context: Mapping[str, Any], name: str) -> Any:
    """What a name a template sets holds before the template sets it."""
    try:
        return lookup(context, name)
    except UndefinedError:
        return Missing(name)


def module_name(template: str) -> str:
    """The generated module's name for ``template``: ``ssdt.asl.j2`` -> ``ssdt_asl_j2``."""
    return "".join(ch if ch.isalnum() else "_" for ch in template)


def render(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` with ``context``."""
    # ``__import__``, not ``importlib.import_module``: the same import, but ``-X importtime``
    # sees it (tests/integration/test_imports.py checks which modules a build imports).
    module = __import__(f"{COMPILED_PACKAGE}.{module_name(name)}", fromlist=["render"])
    text: str = module.render(context)
    return text
