"""The package's shape, as the README's "How it is built" table describes it.

- Layers: a module imports only from its own layer or the layers below it, in the
  pipeline's order (``LAYERS``); nothing below ``commands`` imports a command.
- Size: no hand-written module passes ``MAX_LINES``; each says its job in a docstring.
- One definition per concept: each shared type is defined once, in its module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "pvdesc"
#: Lowest first.  A module may import its own layer and any layer before it.
LAYERS = (
    "errors",
    "kvm",
    "core",
    "tools",
    "read",
    "description",
    "layout",
    "emit",
    "audit",
    "commands",
    "api",
)
#: Generated code (``scripts/generate-compiled``): not written by hand, not measured.
GENERATED = ("description/schema_fast.py", "emit/templates_compiled/")
MAX_LINES = 400
#: Concept -> the one module that defines it.
ONE_HOME = {
    "Range": "core/ranges.py",
    "Labelled": "core/ranges.py",
    "Finding": "core/findings.py",
    "Severity": "core/findings.py",
    "Memslot": "core/model.py",
    "Target": "core/model.py",
}


def _modules() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if not any(str(p.relative_to(PACKAGE)).startswith(g) for g in GENERATED)
    )


def _layer(module: str) -> str:
    """``pvdesc.layout.rules`` -> ``layout``; ``pvdesc`` itself (version) -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "errors"


def _imports(path: Path) -> set[str]:
    """Every ``pvdesc`` module ``path`` imports, at any depth (lazy imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pvdesc"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("pvdesc"))
    return out


def _name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_its_layer_and_below(path: Path) -> None:
    me = _name(path)
    if me in ("pvdesc", "pvdesc.__main__"):
        return  # the package's own front door: version, and the command
    mine = LAYERS.index(_layer(me))
    upward = sorted(m for m in _imports(path) if LAYERS.index(_layer(m)) > mine)
    assert not upward, f"{me} ({LAYERS[mine]}) imports a higher layer: {upward}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_short_and_says_its_job(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.name}: split it by job"
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.strip(), f"{path.name}: no docstring saying its job"


def test_each_shared_concept_has_one_definition() -> None:
    homes: dict[str, list[str]] = {name: [] for name in ONE_HOME}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in homes:
                homes[node.name].append(str(path.relative_to(PACKAGE)))
    assert homes == {name: [home] for name, home in ONE_HOME.items()}


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id == "dataclass")
        or (isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "dataclass")
        for d in node.decorator_list
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_dataclass_docstrings_list_their_attributes(path: Path) -> None:
    """Every public field of a dataclass is named in its docstring's ``Attributes:``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and _is_dataclass(node):
            doc = ast.get_docstring(node) or ""
            fields = [
                s.target.id
                for s in node.body
                if isinstance(s, ast.AnnAssign)
                and isinstance(s.target, ast.Name)
                and not s.target.id.startswith("_")
            ]
            missing = [f for f in fields if f"{f}:" not in doc.partition("Attributes:")[2]]
            assert not missing, f"{path.name}: {node.name} does not describe {missing}"
