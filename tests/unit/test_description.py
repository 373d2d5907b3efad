"""The YAML loader: quantities, defaults, source locations, schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT

from pvdesc.core.model import Boot, Describe, Placement
from pvdesc.core.units import parse_quantity
from pvdesc.description.load import loads
from pvdesc.description.marks import MAX_NODES, SourceMap, _compose
from pvdesc.description.schema_check import schema
from pvdesc.errors import DescriptionError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("0x1000", 4096),
        ("0X1000", 4096),
        ("4K", 4096),
        ("2M", 2 << 20),
        ("2G", 2 << 30),
        ("1T", 1 << 40),
    ],
)
def test_parse_quantity(text: int | str, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["2GB", "1.5G", "-1", "0x", "G", " 4K"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_defaults() -> None:
    d = loads(b"name: x\nvcpus: 3\nmemory:\n  - {base: 0x40000000, size: 1G}\n").description
    assert (d.max_vcpus, d.ipa_bits, d.boot) == (3, 40, Boot.LINUX_DT)
    assert (d.stolen_time.placement, d.stolen_time.describe) == (Placement.HOLE, Describe.AUTO)
    assert d.acpi.oem_id == "PVDESC" and len(d.acpi.oem_table_id) <= 8


def test_hex_strings_and_yaml_ints_agree() -> None:
    a = loads(b"name: x\nvcpus: 1\nmemory:\n  - {base: 0x40000000, size: 1G}\n").description
    b = loads(b'name: x\nvcpus: 1\nmemory:\n  - {base: "0x40000000", size: 1073741824}\n')
    assert a == b.description


def test_source_map_points_at_values() -> None:
    loaded = loads(b"name: x\nvcpus: 1\nmemory:\n  - base: 0x40000000\n    size: 1G\n", "f.yaml")
    assert loaded.source.locate(("memory", 0, "size")) == "f.yaml:5:11"
    assert loaded.source.locate(("memory", 0, "nope")) == "f.yaml:4:5"


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    with pytest.raises(DescriptionError, match=f"more than {MAX_NODES} YAML nodes"):
        loads("\n".join(lines).encode(), "bomb.yaml")


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(DescriptionError, match=r"bomb\.yaml"):
        loads(b"name: " + b"[" * 5000 + b"]" * 5000, "bomb.yaml")


def test_schema_is_valid_json_schema() -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(schema())
    shipped = json.loads(json.dumps(schema()))
    assert shipped["additionalProperties"] is False


def _is_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode()
    except UnicodeDecodeError:
        return False
    return True


#: Every description in the repository that reaches the YAML parser (not-utf8.yaml does not).
_YAML_FILES = sorted(
    p
    for p in [
        *(ROOT / "examples").glob("*.yaml"),
        *(ROOT / "tests" / "data" / "bad").glob("*.yaml"),
        *(ROOT / "bench" / "data").glob("*.yaml"),
    ]
    if _is_utf8(p)
)


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="PyYAML built without libyaml")
@pytest.mark.parametrize("path", _YAML_FILES, ids=lambda p: p.name)
def test_libyaml_and_pure_python_agree(path: Path) -> None:
    """The fast (libyaml) loader gives the same data and source map as the reference one."""
    decoded = path.read_text(encoding="utf-8")

    def compose(loader: Any) -> tuple[Any, SourceMap] | str:
        smap = SourceMap(str(path), {}, {})
        try:
            return _compose(loader, decoded, smap), smap
        except (yaml.YAMLError, DescriptionError) as exc:
            return type(exc).__name__

    assert compose(yaml.CSafeLoader) == compose(yaml.SafeLoader)


#: Plain, quoted and tagged scalars of every implicit type, each written twice (the second
#: time the composer's tag comes from the per-document cache).
_SCALARS = [
    "1",
    "0x10",
    "0o17",
    "1_000",
    "-3",
    "1.5",
    ".inf",
    "1e3",
    "yes",
    "No",
    "true",
    "~",
    "null",
    "",
    "abc",
    "'1'",
    '"0x10"',
    "!!str 5",
    "!!int '7'",
    "2001-12-14",
    "0b101",
    "<<x",
]


@pytest.mark.parametrize("name", ["SafeLoader", "CSafeLoader"])
def test_composed_scalars_are_what_pyyaml_constructs(name: str) -> None:
    """Every scalar composes to what PyYAML's own safe constructor makes of it (libyaml's too:
    PyYAML's wheels carry it)."""
    loader = getattr(yaml, name)
    lines = [f"k{i}: {v}" for i, v in enumerate(_SCALARS * 2)]
    lines += ["seq: [" + ", ".join(v for v in _SCALARS * 2 if v and v[0] not in "!<") + "]"]
    text = "\n".join(lines) + "\n"
    expected = yaml.load(text, Loader=loader)  # a safe loader
    assert _compose(loader, text, SourceMap("t.yaml", {}, {})) == expected
    assert len({repr(v) for v in expected.values()}) > 15  # the types really differ
