"""The compiled templates pvdesc ships are current, used, and render what the templates do.

pvdesc.emit.templating loads a template from its module in pvdesc.emit.templates_compiled
(bytecode Python caches) instead of compiling it in every process; these tests
fail when a module is not what scripts/generate-compiled writes for the current
template, Jinja2 and options, and compare every example's outputs built with the
modules and built from the templates' text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
from helpers import ROOT

from pvdesc.emit import build, templating

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
COMPILED = ROOT / "pvdesc" / "emit" / "templates_compiled"


@pytest.fixture
def fresh() -> Iterator[None]:
    """A new environment (its template cache empty) for the test, and again after it."""
    templating.environment.cache_clear()
    yield
    templating.environment.cache_clear()


def test_every_template_has_its_current_module() -> None:
    """Else run scripts/generate-compiled (after any change to a template)."""
    names = templating.templates()
    assert len(names) >= 10
    want = {f"{templating.module_name(t)}.py" for t in names} | {"__init__.py"}
    assert {p.name for p in COMPILED.glob("*.py")} == want
    for template in names:
        module = COMPILED / f"{templating.module_name(template)}.py"
        assert module.read_text(encoding="utf-8") == templating.compiled_source(template), template


def test_templates_come_from_their_modules(fresh: None) -> None:
    env = templating.environment()
    for template in templating.templates():
        loaded = env.get_template(template)
        module = f"{templating.COMPILED_PACKAGE}.{templating.module_name(template)}"
        assert loaded.root_render_func.__module__ == module, template
        assert loaded.filename is not None and loaded.filename.endswith(f"templates/{template}")


def _outputs() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path in EXAMPLES:
        result = build.plan(path)
        out |= {f"{path.name}/{o.name}": o.data for o in result.outputs}
        out[f"{path.name}/summary"] = build.summary(result, "out").encode()
    return out


def test_modules_render_exactly_what_the_templates_do(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = _outputs()
    templating.environment.cache_clear()
    monkeypatch.setattr(templating, "template_key", lambda source: "stale")
    env = templating.environment()
    from_text = _outputs()
    assert all(
        env.get_template(t).root_render_func.__module__ != f"{templating.COMPILED_PACKAGE}."
        f"{templating.module_name(t)}"
        for t in templating.templates()
    )
    assert from_text == compiled
    assert len(compiled) > 5 * len(EXAMPLES)


def test_a_stale_module_is_not_used(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    real_key = templating.template_key
    monkeypatch.setattr(
        templating, "template_key", lambda source: real_key(source.replace("pvdesc", "PVDESC"))
    )
    loaded = templating.environment().get_template("ssdt.asl.j2")
    assert not (loaded.root_render_func.__module__ or "").startswith(templating.COMPILED_PACKAGE)


def test_the_key_covers_text_jinja_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    key = templating.template_key("x")
    assert templating.template_key("y") != key
    monkeypatch.setattr(jinja2, "__version__", "0.0")  # the module templating reads
    assert templating.template_key("x") != key
    monkeypatch.undo()
    monkeypatch.setitem(templating.OPTIONS, "trim_blocks", False)
    assert templating.template_key("x") != key


def test_module_names_are_distinct() -> None:
    names = [templating.module_name(t) for t in templating.templates()]
    assert len(set(names)) == len(names)
    assert all(n.isidentifier() for n in names)
    assert Path(COMPILED / "__init__.py").is_file()
