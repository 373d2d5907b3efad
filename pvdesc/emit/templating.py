"""Render text outputs from ``templates/`` with Jinja2 (strict: an undefined name is an error).

Compiling a template (Jinja2 parses it and generates Python) cost 30 ms of every
``pvdesc build`` of a uefi-acpi VM (bench/run), each time a process starts.  So
every template is also shipped compiled, as a module of
:mod:`pvdesc.emit.templates_compiled` that ``scripts/generate-compiled`` writes with
this very environment (:func:`compiled_source`), and Python caches as bytecode
like any module.  Each module records a key (:func:`template_key`): a SHA-256
of the template's text, the Jinja2 version and the environment's options.  A
template whose module is missing or holds another key (the template was edited,
Jinja2 upgraded) is compiled from its text as before, so the output never
depends on the modules being current; ``tests/unit/test_templating.py`` fails until
they are.  This is not a cache written at run time: nothing is written outside
the output directory.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import MutableMapping
from functools import cache
from types import ModuleType
from typing import Any

import jinja2

from pvdesc.core.units import human
from pvdesc.description import profiles

#: The package of compiled templates, and the script that writes it.
COMPILED_PACKAGE = "pvdesc.emit.templates_compiled"
GENERATOR = "scripts/generate-compiled"
#: Jinja2 options for every template (part of each compiled template's key).
OPTIONS: dict[str, bool] = {
    "keep_trailing_newline": True,
    "trim_blocks": True,
    "lstrip_blocks": True,
}
#: Templates whose values are HTML-escaped (SVG and HTML); text ones are not.
ESCAPED = ("svg.j2", "html.j2")


def hexa(value: int, width: int = 0) -> str:
    """``0x``-prefixed lowercase hex, zero-padded to ``width`` digits."""
    return f"{value:#0{width + 2}x}" if width else f"{value:#x}"


def module_name(template: str) -> str:
    """The compiled module's name for ``template``: ``ssdt.asl.j2`` -> ``ssdt_asl_j2``."""
    return "".join(ch if ch.isalnum() else "_" for ch in template)


def template_key(source: str) -> str:
    """What a compiled template is valid for: its text, Jinja2's version, the options."""
    signature = f"jinja2 {jinja2.__version__}\0{sorted(OPTIONS.items())}\0escaped {ESCAPED}\0"
    return hashlib.sha256((signature + source).encode("utf-8")).hexdigest()


def _compiled(template: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{COMPILED_PACKAGE}.{module_name(template)}")
    except ImportError:
        return None


class _Loader(jinja2.PackageLoader):
    """``templates/`` of the package; a template whose compiled module is current comes from it."""

    def load(
        self,
        environment: jinja2.Environment,
        name: str,
        globals: MutableMapping[str, Any] | None = None,
    ) -> jinja2.Template:
        source, filename, uptodate = self.get_source(environment, name)
        module = _compiled(name)
        if module is None or getattr(module, "KEY", None) != template_key(source):
            return super().load(environment, name, globals)
        template = environment.template_class.from_module_dict(
            environment, module.__dict__, {} if globals is None else globals
        )
        template.filename = filename  # errors name the template, not the module
        template._uptodate = uptodate
        return template


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
        loader=_Loader("pvdesc.templates", "."),
        undefined=jinja2.StrictUndefined,
        # SVG/HTML templates (``*.svg.j2``, ``*.html.j2``) escape every value; text ones do not.
        autoescape=jinja2.select_autoescape(ESCAPED, default_for_string=False, default=False),
        keep_trailing_newline=OPTIONS["keep_trailing_newline"],
        trim_blocks=OPTIONS["trim_blocks"],
        lstrip_blocks=OPTIONS["lstrip_blocks"],
    )
    env.filters["hex"] = hexa
    env.filters["rust_hex"] = rust_hex
    env.globals["vmm_model"] = profiles.model_text
    env.filters["human"] = human
    return env


def compiled_source(template: str) -> str:
    """The module :mod:`.templates_compiled` ships for ``template`` (the generator's text)."""
    env = environment()
    assert env.loader is not None
    source, _filename, _ = env.loader.get_source(env, template)
    # defer_init: the module's functions find ``environment`` when rendering, not at import.
    code = env.compile(source, template, f"templates/{template}", raw=True, defer_init=True)
    head = (
        f'"""GENERATED by {GENERATOR} from pvdesc/templates/{template}: do not edit.\n\n'
        f"Jinja2 {jinja2.__version__}'s code for the template (see pvdesc.emit.templating).\n"
        '"""\n'
        "# mypy: ignore-errors\n\n"
        f'KEY = "{template_key(source)}"\n\n'
    )
    return head + code + "\n"


def templates() -> list[str]:
    """Every template in ``templates/``, sorted."""
    env = environment()
    assert env.loader is not None
    return sorted(t for t in env.loader.list_templates() if t.endswith(".j2"))


def render(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` with ``context``."""
    return environment().get_template(name).render(**context)
