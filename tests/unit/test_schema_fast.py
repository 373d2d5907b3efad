"""The compiled schema check (fastjsonschema) never accepts what jsonschema refuses.

pvdesc.description.schema_check validates with a compiled check first and asks jsonschema, the
reference, only when that check refuses.  That is exactly jsonschema's language as
long as fast-accept implies reference-accept; these tests check the implication on
every description in the repository and on generated near-valid data, and that the
fast path is really taken for valid input (else bench/run measures the slow one).
"""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvdesc.description import schema_check as description
from pvdesc.description.marks import SourceMap, _compose
from pvdesc.description.schema_check import _compile_fast, schema
from pvdesc.errors import DescriptionError


def reference_accepts(data: Any) -> bool:
    return not any(True for _ in description._validator().iter_errors(data))


def fast_accepts(data: Any) -> bool:
    return description._schema_accepts_fast(data)


def _data(path: Path) -> Any:
    try:
        return _compose(
            yaml.SafeLoader, path.read_text(encoding="utf-8"), SourceMap(str(path), {}, {})
        )
    except (UnicodeDecodeError, yaml.YAMLError, DescriptionError, RecursionError):
        return None


EXAMPLES = [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "bench/data/large-vm.yaml"]
CORPUS = sorted(
    [
        *(ROOT / "tests/data/bad").glob("*.yaml"),
        *(ROOT / "tests/data/fuzz").glob("*.yaml"),
    ]
)


def test_fast_path_is_compiled_for_the_shipped_schema() -> None:
    assert description._fast_check() is not None


def test_the_generated_module_is_what_the_generator_makes_of_the_schema() -> None:
    """Else run scripts/generate-compiled (after any change to the schema)."""
    module = ROOT / "pvdesc" / "description" / f"{description.FAST_MODULE}.py"
    assert module.read_text(encoding="utf-8") == description.fast_check_source()
    from pvdesc.description import schema_fast

    assert description._fast_check() is schema_fast.validate


def test_a_module_made_from_another_schema_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = description._schema_bytes()
    monkeypatch.setattr(description, "_schema_bytes", lambda: shipped.replace(b"64", b"63"))
    description._fast_check.cache_clear()
    try:
        assert description._fast_check() is None
        assert not fast_accepts(BASE)  # the reference decides everything
        assert reference_accepts(BASE)
    finally:
        description._fast_check.cache_clear()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_valid_descriptions_take_the_fast_path(path: Path) -> None:
    data = _data(path)
    assert reference_accepts(data)
    assert fast_accepts(data)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_fast_accept_implies_reference_accept_on_the_corpus(path: Path) -> None:
    data = _data(path)
    if fast_accepts(data):
        assert reference_accepts(data)


@pytest.mark.parametrize(
    "keyword",
    [
        {"const": 1},  # unknown to draft 04: it would be ignored, accepting more
        {"exclusiveMinimum": 1},  # a boolean in draft 04, a number in 2020-12
        {"if": {"type": "integer"}, "then": {"minimum": 1}},
        {"prefixItems": [{"type": "integer"}]},
    ],
    ids=lambda k: next(iter(k)),
)
def test_a_keyword_draft_04_reads_differently_disables_the_fast_path(
    keyword: dict[str, Any],
) -> None:
    changed = copy.deepcopy(schema())
    changed["properties"]["vcpus"] = {"type": "integer", **keyword}
    assert _compile_fast(changed) is None
    # ... and a property merely *named* like such a keyword does not.
    named = copy.deepcopy(schema())
    named["properties"]["acpi"]["properties"]["const"] = {"type": "integer"}
    assert _compile_fast(named) is not None


# Near-valid data: a valid description with one value swapped for a tricky one.
# YAML's safe loader can produce every Python type below.
TRICKY: list[Any] = [
    0, 1, -1, 2.0, 1.5, True, False, None, 2**64, 4095, 4096, 52, 53, 31, 32,
    "", "a", "A", "0x40000000", "0x40000000\n", "4G", "4g", "4G\n", "-1", "1.0", "0x", "x",
    "a" * 64, "a" * 65, "bad name", "vm-1", "vm\n",
    [], [{}], {}, {"base": 0, "size": 1}, {"base": 0, "size": 1, "extra": 1},
    datetime.date(2001, 2, 3), b"\x00", (1, 2), {1, 2}, [("a", 1)],
    "hole", "carve", "fixed", "auto", "none", "acpi", "uefi-acpi", "qemu-virt",
]  # fmt: skip

BASE: dict[str, Any] = {
    "name": "vm",
    "vcpus": 2,
    "max_vcpus": 4,
    "ipa_bits": 40,
    "boot": "linux-dt",
    "vmm": "generic-kvm",
    "memory": [{"base": "0x40000000", "size": "1G", "numa_node": 0}],
    "devices": [{"name": "uart", "base": 0x9000000, "size": "4K"}],
    "acpi": {"oem_id": "PVDESC", "oem_table_id": "PVTIME", "oem_revision": 1},
    "stolen_time": {"placement": "hole", "base": 0, "describe": "auto"},
}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


PATHS = _paths(BASE)[1:]


@st.composite
def near_valid(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            if draw(st.booleans()) and isinstance(node, dict):
                del node[path[-1]]
            else:
                node[path[-1]] = draw(st.sampled_from(TRICKY))
        except (KeyError, IndexError, TypeError):
            continue
    if draw(st.booleans()):
        data[draw(st.sampled_from(["extra", "memory", "devices", "nmae"]))] = draw(
            st.sampled_from(TRICKY)
        )
    return data


def test_base_is_valid() -> None:
    assert reference_accepts(BASE) and fast_accepts(BASE)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid())
def test_fast_accept_implies_reference_accept(data: Any) -> None:
    if fast_accepts(data):
        assert reference_accepts(data), data


def test_every_single_substitution() -> None:
    """Each key replaced by each tricky value, and each key removed: exhaustive."""
    checked = accepted = 0
    for path in PATHS:
        for value in [*TRICKY, KeyError]:
            data = copy.deepcopy(BASE)
            node = data
            for key in path[:-1]:
                node = node[key]
            if value is KeyError:
                del node[path[-1]]
            else:
                node[path[-1]] = value
            checked += 1
            if fast_accepts(data):
                accepted += 1
                assert reference_accepts(data), (path, value)
    assert checked > 1000 and 0 < accepted < checked
