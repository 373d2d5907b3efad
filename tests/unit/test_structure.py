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


def _is_namedtuple(node: ast.ClassDef) -> bool:
    return any(
        (isinstance(b, ast.Name) and b.id == "NamedTuple")
        or (isinstance(b, ast.Attribute) and b.attr == "NamedTuple")
        for b in node.bases
    )


def _annotated(node: ast.ClassDef) -> list[str]:
    """The names a class body declares with an annotation (a record's fields), in order."""
    return [
        s.target.id
        for s in node.body
        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
    ]


def _slots(node: ast.ClassDef) -> list[str]:
    """The names in a ``__slots__ = (...)`` of the class body."""
    for s in node.body:
        if (
            isinstance(s, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in s.targets)
            and isinstance(s.value, ast.Tuple | ast.List)
        ):
            return [
                e.value
                for e in s.value.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            ]
    return []


def record_fields(tree: ast.Module) -> dict[str, list[str]]:
    """Each record class of a module -> the public fields its docstring must describe.

    A record is a ``typing.NamedTuple`` (its annotated fields), a subclass of one
    defined in the same module (the fields it inherits), or a plain class with
    ``__slots__`` (the slots).  A private ``NamedTuple`` base that a public subclass in
    the module extends is described by that subclass, not by itself.
    """
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    own = {c.name: _annotated(c) for c in classes if _is_namedtuple(c)}
    out: dict[str, list[str]] = {}
    extended: set[str] = set()
    for c in classes:
        inherited = [f for b in c.bases if isinstance(b, ast.Name) for f in own.get(b.id, [])]
        extended.update(b.id for b in c.bases if isinstance(b, ast.Name) and b.id in own)
        fields = own.get(c.name, []) + inherited + _slots(c)
        if fields:
            out[c.name] = [f for f in fields if not f.startswith("_")]
    return {n: f for n, f in out.items() if not (n.startswith("_") and n in extended)}


def missing_attributes(tree: ast.Module) -> dict[str, list[str]]:
    """Each record class -> its public fields its docstring's ``Attributes:`` does not name."""
    docs = {
        n.name: ast.get_docstring(n) or "" for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
    }
    out = {}
    for name, fields in record_fields(tree).items():
        listed = docs[name].partition("Attributes:")[2]
        missing = [f for f in fields if f"{f}:" not in listed]
        if missing:
            out[name] = missing
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_record_docstrings_list_their_attributes(path: Path) -> None:
    """Every public field of a record is named in its docstring's ``Attributes:``."""
    assert missing_attributes(ast.parse(path.read_text())) == {}, path.name


def _imported(tree: ast.Module) -> set[str]:
    """The top-level names of every module a file imports, at any depth."""
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out.update(a.name.partition(".")[0] for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            out.add(n.module.partition(".")[0])
    return out


def test_the_package_defines_no_dataclass() -> None:
    """Records are ``typing.NamedTuple`` (or slotted classes): ``dataclasses`` costs every start."""
    users = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if "dataclasses" in _imported(ast.parse(p.read_text()))
    ]
    assert users == []


_RECORDS = '''
class Whole(NamedTuple):
    """Attributes:
        a: one.
        b: two.
    """
    a: int
    b: int


class _Fields(NamedTuple):
    """The fields of Sub."""
    a: int
    c: int


class Sub(_Fields, Mixin):
    """Attributes:
        a: one.
        LINE
    """
    __slots__ = ()


class Plain:
    """Attributes:
        x: one.
    """
    __slots__ = ("x", "y", "_z")
'''


def test_missing_attributes_sees_every_kind_of_record() -> None:
    """A field left out of ``Attributes:`` is found in each record shape the package uses."""
    assert missing_attributes(ast.parse(_RECORDS)) == {"Sub": ["c"], "Plain": ["y"]}
    assert missing_attributes(ast.parse(_RECORDS.replace("LINE", "c: two."))) == {"Plain": ["y"]}
    assert missing_attributes(ast.parse(_RECORDS.replace("b: two.", ""))) == {
        "Whole": ["b"],
        "Sub": ["c"],
        "Plain": ["y"],
    }
