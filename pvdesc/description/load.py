"""Load a YAML VM description into the model, with file:line:column on every error.

The YAML is composed (not constructed) with PyYAML's safe loader, so every
value keeps its mark; the plain data is then validated against the JSON Schema
shipped in ``pvdesc/description/schema/description.schema.json`` and converted to a
:class:`~pvdesc.core.model.VmDescription`.  A :class:`SourceMap` maps key paths back
to ``file:line:column`` so that errors raised later (by :mod:`pvdesc.core.model` or
:mod:`pvdesc.layout.allocate`, which only know key paths) can name the place too.
"""

from __future__ import annotations

import difflib
import gc
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pvdesc import kvm

# parse_quantity lives in the model (``pvdesc check`` parses --region without YAML);
# it is imported here too, where descriptions are read.
from pvdesc.core.model import (
    AcpiIds,
    Boot,
    Describe,
    Device,
    Placement,
    RamBank,
    StolenTimeSpec,
    VmDescription,
    Vmm,
    check_consistent,
)
from pvdesc.core.ranges import Range
from pvdesc.core.units import MAX_QUANTITY_BITS, parse_quantity
from pvdesc.errors import DescriptionError, KeyPath, PvdescError, format_keypath, one_line, short
from pvdesc.layout import profiles
from pvdesc.tools.inputs import display_name, read_bounded, too_big

#: The JSON Schema for descriptions, in the package.
SCHEMA_FILE = "schema/description.schema.json"
#: Refuse larger files outright (by size, before reading them): a real description is a few KiB.
MAX_FILE_BYTES = 1 << 20
#: Refuse documents with more YAML nodes than this (also stops alias bombs,
#: which would otherwise expand exponentially when walked).
MAX_NODES = 100_000
#: Every number in a description is below 2**64 (MAX_QUANTITY_BITS): a larger
#: one is refused where it is written, before it reaches any message (Python refuses
#: to print integers of more than 4300 decimal digits).
MAX_QUANTITY_BITS = MAX_QUANTITY_BITS

if TYPE_CHECKING:  # yaml.CSafeLoader exists only when PyYAML was built with libyaml
    _Loader = yaml.SafeLoader | yaml.CSafeLoader
#: libyaml's parser when PyYAML has it: 8x faster than the pure-Python one on a
#: 200-device description (bench/run).  Its marks are the same; its error messages
#: are not, so a document it rejects is parsed again by ``yaml.SafeLoader``.
FAST_LOADER: type[_Loader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class SourceMap:
    """Where each key path of a description was written.

    Attributes:
        file: the description's path as given.
        values: key path -> (line, column), 1-based, of the value.
        keys: key path -> (line, column) of the mapping key itself.
    """

    file: str
    values: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: KeyPath, *, key: bool = False) -> str:
        """``file:line:col`` of the longest known prefix of ``path``."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            pos = table.get(probe) or self.values.get(probe)
            if pos is not None:
                return f"{self.file}:{pos[0]}:{pos[1]}"
            probe = probe[:-1]
        pos = self.values.get(())
        return f"{self.file}:{pos[0]}:{pos[1]}" if pos else f"{self.file}:1:1"

    def where(self, path: KeyPath, *, key: bool = False) -> str:
        """``file:line:col: key.path`` for an error message (``key``: see :meth:`locate`)."""
        return f"{self.locate(path, key=key)}: {format_keypath(path)}"

    def resolve(self, err: PvdescError) -> PvdescError:
        """Return ``err`` with a key-path ``where`` turned into file:line:col text."""
        if isinstance(err.where, tuple):
            err.where = self.where(err.where)
        elif err.where is None:
            err.where = self.file
        return err


@dataclass(frozen=True)
class LoadedDescription:
    """A parsed, validated description and where it came from.

    Attributes:
        description: the model.
        source: the source map for error locations.
        text: the exact bytes read (the manifest records their hash).
    """

    description: VmDescription
    source: SourceMap
    text: bytes


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema for descriptions (also usable by editors)."""
    raw = _schema_bytes().decode("utf-8")
    result: dict[str, Any] = json.loads(raw)
    return result


def _mark(smap: SourceMap, node: yaml.Node) -> str:
    return f"{smap.file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _construct(loader: _Loader, node: yaml.Node, smap: SourceMap, path: KeyPath | None) -> Any:
    """One scalar's Python value; a value PyYAML cannot build, or a huge number, is an error.

    PyYAML's safe constructors raise plain Python errors, not ``YAMLError``, for
    some well-formed YAML: ``ValueError`` (``!!int abc``, ``!!float x``, a
    timestamp such as ``2001-02-30``), ``KeyError`` (``!!bool x``), ``IndexError``
    (``!!int ''``), ``AttributeError`` (``!!timestamp x``); and they build
    integers of any size.  All are refused here, at the value's mark (followed by
    its key path, except for a key: ``path`` None).

    The scalar constructor is called directly when the tag has one (what
    ``construct_object`` does for a scalar, without its bookkeeping: a third of the
    time to read the 200-device benchmark description); other tags go through
    ``construct_object``, which finds multi-constructors or refuses the tag.
    """
    build = loader.yaml_constructors.get(node.tag)
    try:
        value = build(loader, node) if build is not None else loader.construct_object(node)
    except (ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError) as exc:
        kind = str(node.tag).rsplit(":", 1)[-1]
        if "integer string conversion" in str(exc):
            text = "a number with more than 4300 digits"
        else:
            text = f"cannot read {short(node.value)} as a YAML {kind}"
        raise DescriptionError(text, _where(smap, node, path)) from None
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value.bit_length() > MAX_QUANTITY_BITS
    ):
        raise DescriptionError(
            f"number of {value.bit_length()} bits: every number in a description is below 2^64",
            _where(smap, node, path),
        )
    return value


def _where(smap: SourceMap, node: yaml.Node, path: KeyPath | None) -> str:
    """``file:line:col`` of ``node``, then its key path if it is a value (errors only)."""
    return _mark(smap, node) if path is None else f"{_mark(smap, node)}: {format_keypath(path)}"


def _to_data(
    loader: _Loader, node: yaml.Node, smap: SourceMap, path: KeyPath, budget: list[int]
) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise DescriptionError(
            f"description has more than {MAX_NODES} YAML nodes (or an alias bomb)",
            _mark(smap, node),
        )
    smap.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            merge = key_node.tag == "tag:yaml.org,2002:merge"
            if not isinstance(key_node, yaml.ScalarNode) or merge:
                raise DescriptionError(
                    "keys must be plain names (no merge keys)", _mark(smap, key_node)
                )
            key = _construct(loader, key_node, smap, None)
            if not isinstance(key, str):
                kind = type(key).__name__
                raise DescriptionError(
                    f"key {short(key)} must be a name, not {kind}", _mark(smap, key_node)
                )
            if key in out:
                raise DescriptionError(f"duplicate key {short(key)}", _mark(smap, key_node))
            child = (*path, key)
            smap.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _to_data(loader, value_node, smap, child, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _to_data(loader, item, smap, (*path, i), budget) for i, item in enumerate(node.value)
        ]
    return _construct(loader, node, smap, path)


def _schema_error_message(err: Any, data: Any) -> tuple[KeyPath, str, bool]:
    """Turn a jsonschema error into (key path, one-line message, points-at-key)."""
    path: KeyPath = tuple(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        bad = extra[0]
        hint = difflib.get_close_matches(bad, allowed, n=1)
        tip = f"; did you mean {hint[0]!r}?" if hint else f"; allowed keys: {', '.join(allowed)}"
        return (*path, bad), f"unknown key {short(bad)}{tip}", True
    if err.validator == "required":
        return path, err.message, False
    if err.validator == "enum":
        choices = " | ".join(str(c) for c in err.validator_value)
        return path, f"{short(err.instance)} is not one of: {choices}", False
    if err.validator == "anyOf" and path and path[-1] in ("base", "size"):
        return (
            path,
            (
                f'{short(err.instance)} is not an address or size: use an integer, "0x...", or a '
                "number with K/M/G/T"
            ),
            False,
        )
    if err.validator == "pattern" and path == ("name",):
        return (
            path,
            (
                f"name {short(err.instance)} must match [a-z0-9][a-z0-9-]*: it names the output "
                "files, so no paths, dots or capitals"
            ),
            False,
        )
    if err.validator == "maxItems":
        return path, _too_long(len(err.instance), err.validator_value), False
    if err.validator == "type":
        types = err.validator_value
        kinds = " or ".join(types) if isinstance(types, list) else str(types)
        return path, f"{short(err.instance)} is not of type {kinds!r}", False
    if err.validator == "maxLength":
        return path, f"{short(err.instance)} is longer than {err.validator_value}", False
    if err.validator == "pattern":
        return path, f"{short(err.instance)} does not match {err.validator_value!r}", False
    # The rest quote small values only (numbers are below 2^64, see _construct).
    return path, one_line(err.message, 200), False


def _inline_refs(node: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/NAME"}`` (a ``$ref`` alone) replaced by NAME.

    The same schema without the indirection: jsonschema resolves each ``$ref``
    through its registry on every use, which was a third of the time to validate
    a 200-device description (bench/run).  A ``$ref`` with siblings is kept.
    """
    if depth > 32:
        raise PvdescError("internal: $defs nest too deeply in the description schema")
    if isinstance(node, list):
        return [_inline_refs(item, defs, depth + 1) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if len(node) == 1 and isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs, depth + 1)
    return {key: _inline_refs(value, defs, depth + 1) for key, value in node.items()}


@cache
def _validator() -> Any:
    """The validator for :func:`schema`, built once (jsonschema imported lazily).

    Draft 2020-12, except that ``integer`` means a Python int: JSON Schema counts
    ``2.0`` as an integer, so ``vcpus: 2.0`` or ``base: 1.`` passed the schema as
    floats and crashed later (``1 << 40.0``); found by fuzzing.
    """
    from jsonschema import Draft202012Validator, validators

    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    cls = validators.extend(Draft202012Validator, type_checker=checker)  # type: ignore[no-untyped-call]
    full = schema()
    return cls(_inline_refs(full, full.get("$defs", {})))


#: Schema keywords whose draft-04 meaning is the same as draft 2020-12's, for the
#: subset pvdesc uses (``exclusiveMinimum``, ``const``, ``if``... are not: a draft-04
#: compiler would read them differently or ignore them).  See :func:`_fast_check`.
_DRAFT4_SAME = frozenset(
    {
        "$schema", "$id", "$defs", "$ref", "title", "description",
        "type", "enum", "properties", "additionalProperties", "required",
        "items", "minItems", "maxItems", "minimum", "maximum",
        "minLength", "maxLength", "pattern", "anyOf",
    }
)  # fmt: skip


def _keywords(node: Any, under_properties: bool = False) -> set[str]:
    """Every keyword used anywhere in a schema (property and ``$defs`` names excluded)."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= _keywords(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if under_properties:  # a property name -> its schema
                found |= _keywords(value)
                continue
            found.add(key)
            if key not in ("enum", "required"):  # these hold data, not schemas
                found |= _keywords(value, under_properties=key in ("properties", "$defs"))
    return found


#: The package module holding the compiled schema check (:func:`fast_check_source`), and the
#: script that writes it.
FAST_MODULE = "schema_fast"
FAST_GENERATOR = "scripts/generate-compiled"
#: The one import line of fastjsonschema's generated code, and what replaces it: the module
#: then needs fastjsonschema only to be generated, not to run.
_FAST_IMPORT = "from fastjsonschema import JsonSchemaValueException, JsonSchemaValuesException\n"
_FAST_EXCEPTIONS = """

class JsonSchemaValueException(ValueError):
    \"\"\"The data does not match the schema.\"\"\"


class JsonSchemaValuesException(ValueError):
    \"\"\"The data does not match the schema (several reasons).\"\"\"

"""
_FAST_ENTRY_RE = re.compile(r"^def (?P<name>\w+)\(data\b", re.MULTILINE)


def _schema_bytes() -> bytes:
    """The shipped schema's bytes, read through the package's own loader when it can.

    ``loader.get_data`` (what :func:`pkgutil.get_data` calls) reads a folder or a
    zip alike without importing :mod:`importlib.resources`' readers (zipfile,
    threading: 2.4 ms of a command's start).
    """
    loader = getattr(__spec__, "loader", None)
    get_data = getattr(loader, "get_data", None)
    if get_data is not None:
        data: bytes = get_data(str(Path(__file__).parent / SCHEMA_FILE))
        return data
    return resources.files(__package__).joinpath(SCHEMA_FILE).read_bytes()


@cache
def _fast_check() -> Callable[[Any], Any] | None:
    """A compiled schema check for the common case, valid input; None if unsafe or stale.

    :func:`_validator` (jsonschema) is the reference and writes every message, but
    it took 11 ms of a 28 ms build of bench/data/large-vm.yaml and its import 67 ms
    of a command's start (bench/run).  fastjsonschema compiles the same schema to
    plain Python (1.6 ms there); compiling it took another 14 ms of every process,
    so the code is generated once, when the schema changes, into the module
    :data:`FAST_MODULE` (:func:`fast_check_source`, written by
    :data:`FAST_GENERATOR`; tests/unit/test_schema_fast.py fails when the module is not
    what the generator makes of the current schema).  The module records the
    SHA-256 of the schema it was made from: a module that does not match the
    shipped schema is never used (the reference then decides everything).

    Its answer is trusted only when it *accepts*; anything it rejects goes to the
    reference, so messages and the accepted set are exactly jsonschema's as long
    as fast-accept implies reference-accept (tests/unit/test_schema_fast.py checks that
    property).  It is compiled as draft 04, where ``integer`` excludes ``2.0`` as
    our reference does (draft 06+ accept it); that is only the same language
    because every keyword in the schema means the same in both drafts
    (:data:`_DRAFT4_SAME`), else there is no fast path.  Its patterns end at
    ``\\Z`` where jsonschema's ``$`` also allows a final newline: stricter, so
    only more work for the reference.
    """
    import hashlib
    import importlib

    try:
        module = importlib.import_module(f"{__package__}.{FAST_MODULE}")
    except ImportError:
        return None
    if hashlib.sha256(_schema_bytes()).hexdigest() != module.SCHEMA_SHA256:
        return None
    check: Callable[[Any], Any] = module.validate
    return check


def fast_check_source(full: dict[str, Any] | None = None, digest: str | None = None) -> str | None:
    """The Python source of the module :data:`FAST_MODULE` for ``full`` (the shipped schema).

    ``digest`` is the SHA-256 recorded in it (default: the shipped schema's).
    ``None`` if the schema uses a keyword not in :data:`_DRAFT4_SAME`.  Needs
    fastjsonschema (a test and generation dependency only).
    """
    import hashlib

    import fastjsonschema

    if full is None:
        full = schema()
    if digest is None:
        digest = hashlib.sha256(_schema_bytes()).hexdigest()
    if not _keywords(full) <= _DRAFT4_SAME:
        return None
    draft4 = {**full, "$schema": "http://json-schema.org/draft-04/schema#"}
    code: str = fastjsonschema.compile_to_code(draft4, use_formats=False, detailed_exceptions=False)
    entry = _FAST_ENTRY_RE.search(code)
    if _FAST_IMPORT not in code or entry is None:
        raise PvdescError(
            "internal: fastjsonschema's generated code changed shape; update fast_check_source"
        )
    head = (
        f'"""GENERATED by {FAST_GENERATOR} from pvdesc/{SCHEMA_FILE}: do not edit.\n\n'
        "The description schema compiled to Python by fastjsonschema "
        f"{fastjsonschema.VERSION} as draft 04, the\n"
        "fast path of pvdesc.description.load's schema check (see description._fast_check).\n"
        '"""\n'
        "# mypy: ignore-errors\n\n"
        f'SCHEMA_SHA256 = "{digest}"\n\n'
    )
    body = code.replace(_FAST_IMPORT, _FAST_EXCEPTIONS, 1)
    return f"{head}{body}\n\nvalidate = {entry['name']}\n"


def _compile_fast(full: dict[str, Any]) -> Callable[[Any], Any] | None:
    """:func:`fast_check_source` for ``full``, executed; None if it uses an unsafe keyword."""
    source = fast_check_source(full, digest="")
    if source is None:
        return None
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<{FAST_MODULE} for a schema>", "exec"), namespace)
    check: Callable[[Any], Any] = namespace["validate"]
    return check


def _schema_accepts_fast(data: Any) -> bool:
    """True if the fast check accepts ``data`` (any doubt: False, ask the reference)."""
    check = _fast_check()
    if check is None:
        return False
    try:
        check(data)
    except Exception:  # a rejection, or anything unexpected: the reference decides
        return False
    return True


def _too_long(count: int, limit: int) -> str:
    return (
        f"{count} entries: at most {limit} are allowed "
        "(a limit on input size; a real VM has a handful)"
    )


def _long_lists(data: Any) -> dict[str, int]:
    """Top-level lists longer than their ``maxItems``: key -> the limit.

    The reference validator checks every item of a list it already refuses as too
    long: 19,990 RAM banks (within the node limit) took 1.7 s.  Such a list is
    refused by :func:`_check_schema` itself, at the list, without looking inside.
    """
    if not isinstance(data, dict):
        return {}
    props = schema().get("properties", {})
    out = {}
    for key, value in data.items():
        sub = props.get(key) if isinstance(key, str) else None
        limit = sub.get("maxItems") if isinstance(sub, dict) else None
        if isinstance(limit, int) and isinstance(value, list) and len(value) > limit:
            out[key] = limit
    return out


def _check_schema(data: Any, smap: SourceMap) -> None:
    if _schema_accepts_fast(data):
        return
    long_lists = _long_lists(data)
    # (line, column, -depth): the error that comes first in the file; deepest first at a tie.
    found: list[tuple[tuple[int, int, int], KeyPath, str, bool]] = []
    for key, limit in long_lists.items():
        loc = smap.values.get((key,), (10**9, 0))
        found.append(((loc[0], loc[1], -1), (key,), _too_long(len(data[key]), limit), False))
    # The long lists' items are not checked (errors inside come later in the file anyway).
    rest = {k: ([] if k in long_lists else v) for k, v in data.items()} if long_lists else data
    for err in _validator().iter_errors(rest):
        path = tuple(err.absolute_path)
        if path[:1] and path[0] in long_lists:
            continue
        loc = smap.values.get(path, (10**9, 0))
        found.append(((loc[0], loc[1], -len(path)), *_schema_error_message(err, data)))
    if found:
        _, path, message, at_key = min(found, key=lambda f: f[0])
        raise DescriptionError(message, smap.where(path, key=at_key))


def _quantity(value: int | str, path: KeyPath) -> int:
    try:
        return parse_quantity(value)
    except ValueError as exc:
        raise DescriptionError(str(exc), path) from None


def _build(data: dict[str, Any]) -> VmDescription:
    memory = tuple(
        RamBank(
            Range(
                _quantity(b["base"], ("memory", i, "base")),
                _quantity(b["size"], ("memory", i, "size")),
            ),
            b.get("numa_node"),
            i,
        )
        for i, b in enumerate(data["memory"])
    )
    devices = tuple(
        Device(
            d["name"],
            Range(
                _quantity(d["base"], ("devices", i, "base")),
                _quantity(d["size"], ("devices", i, "size")),
            ),
            i,
        )
        for i, d in enumerate(data.get("devices", []))
    )
    st = data.get("stolen_time", {})
    spec = StolenTimeSpec(
        placement=Placement(st.get("placement", "hole")),
        base=_quantity(st["base"], ("stolen_time", "base")) if "base" in st else None,
        describe=Describe(st.get("describe", "auto")),
    )
    acpi = data.get("acpi", {})
    defaults = AcpiIds()
    ids = AcpiIds(
        oem_id=acpi.get("oem_id", defaults.oem_id),
        oem_table_id=acpi.get("oem_table_id", defaults.oem_table_id),
        oem_revision=acpi.get("oem_revision", defaults.oem_revision),
    )
    vcpus = data["vcpus"]
    return VmDescription(
        name=data["name"],
        vcpus=vcpus,
        max_vcpus=data.get("max_vcpus", vcpus),
        ipa_bits=data.get("ipa_bits", kvm.IPA_BITS_DEFAULT),
        boot=Boot(data.get("boot", "linux-dt")),
        vmm=Vmm(data.get("vmm", "generic-kvm")),
        memory=memory,
        devices=devices,
        stolen_time=spec,
        acpi=ids,
        vmm_version=data.get("vmm_version"),
    )


#: The events that make a node (an alias, which repeats one, included).
_NODE_EVENTS = (
    yaml.ScalarEvent,
    yaml.SequenceStartEvent,
    yaml.MappingStartEvent,
    yaml.AliasEvent,
)


def _node_limit(file: str, mark: Any) -> DescriptionError:
    return DescriptionError(
        f"description has more than {MAX_NODES} YAML nodes (or an alias bomb)",
        f"{file}:{mark.line + 1}:{mark.column + 1}",
    )


def _count_nodes(loader_class: type[_Loader], text: str, file: str) -> None:
    """Refuse ``text`` at its ``MAX_NODES + 1``-th node, reading only parser events.

    A composer builds the whole tree before anyone can count it: a 1 MiB flow
    list ``x: [1,1,1,...`` is half a million nodes, 2.3 s and 190 MB to build and
    then refuse, and 18 s and 330 MB when unclosed (the reference parser then read
    it all again for its message).  libyaml parses lazily, and pulling its events
    without building anything costs a quarter of composing them, so this pass runs
    first and stops at the limit; a syntax error shows here as it would there.
    Each alias counts once; :func:`_to_data` counts it again when it expands.
    """
    parser = loader_class(text)
    try:
        left = MAX_NODES
        while not parser.check_event(yaml.StreamEndEvent):
            event = parser.get_event()
            if isinstance(event, _NODE_EVENTS):
                left -= 1
                if left < 0:
                    raise _node_limit(file, event.start_mark)
    finally:
        parser.dispose()


class _CountingLoader(yaml.SafeLoader):
    """The pure-Python reference loader, refusing a document at its ``MAX_NODES + 1``-th node.

    It reads at most :data:`REPARSE_CHARS` + :data:`REPARSE_PAST` characters, so
    counting while composing is enough.
    """

    nodes_left = MAX_NODES
    #: The description's path as the user gave it.
    file = "<description>"

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.nodes_left -= 1
        if self.nodes_left < 0:
            raise _node_limit(self.file, self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        node: yaml.Node = super().compose_node(parent, index)  # type: ignore[assignment]
        return node


#: Documents up to this many characters are not counted first (0.5 ms of the 5 ms to load
#: the 10 KiB bench/data/large-vm.yaml): they hold a few times as many nodes at most, which
#: libyaml builds in milliseconds, and :func:`_to_data` still counts them.
COUNT_ABOVE_CHARS = MAX_NODES // 4
#: A document libyaml rejects is parsed again by the reference parser for a clearer
#: message only if libyaml's error lies within this many characters of the start:
#: the reference parser reads ~1 MB in 10 s, so this bounds the work spent on an
#: error's location; further on, libyaml's own message and mark are given.
REPARSE_CHARS = 16 << 10
#: How far past libyaml's error the reference parser may read (the rest of that line).
REPARSE_PAST = 1 << 10


def _compose(loader_class: type[_Loader], text: str, smap: SourceMap) -> Any:
    """The single YAML document in ``text`` as plain data; fills ``smap`` on the way."""
    loader = loader_class(text)
    if isinstance(loader, _CountingLoader):
        loader.file = smap.file
    # The cyclic garbage collector, triggered again and again by the allocation of up
    # to 100,000 nodes, walked them all each time: 0.6 s of 0.8 s to compose 20,000
    # RAM banks.  Nothing here makes cycles worth collecting before the next collection.
    collecting = gc.isenabled()
    gc.disable()
    try:
        node = loader.get_single_node()
        if node is None:
            raise DescriptionError(
                "empty document: a description is a YAML mapping", f"{smap.file}:1:1"
            )
        return _to_data(loader, node, smap, (), [MAX_NODES])
    finally:
        loader.dispose()
        if collecting:
            gc.enable()


def _error_index(exc: yaml.YAMLError) -> int:
    """The character offset of a YAML error (the end of the text when it has no mark)."""
    if isinstance(exc, yaml.reader.ReaderError):
        return int(exc.position)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return int(mark.index) if mark is not None else MAX_FILE_BYTES


def loads(text: bytes, file: str = "<description>") -> LoadedDescription:
    """Parse and validate description bytes; errors carry ``file:line:col``."""
    smap = SourceMap(file)
    if len(text) > MAX_FILE_BYTES:
        raise DescriptionError(too_big(len(text), MAX_FILE_BYTES, "descriptions"), file)
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = text[: exc.start].count(b"\n") + 1
        raise DescriptionError(f"not UTF-8 text (byte {exc.start})", f"{file}:{line}:1") from None
    try:
        try:
            if len(decoded) > COUNT_ABOVE_CHARS:
                _count_nodes(FAST_LOADER, decoded, file)
            data = _compose(FAST_LOADER, decoded, smap)
        except yaml.YAMLError as fast_error:
            at = _error_index(fast_error)
            if "maximum nesting depth" in str(getattr(fast_error, "problem", "")):
                # libyaml stops at depth 1000; the reference scanner is quadratic in
                # the depth of flow collections (1.5 s for 1,300 levels) before it
                # reaches Python's recursion limit: say it without asking it.
                raise DescriptionError("YAML nested too deeply", file) from None
            if FAST_LOADER is yaml.SafeLoader or at > REPARSE_CHARS:
                raise
            # libyaml's messages are vaguer ("found character that cannot start any
            # token"): let the pure-Python parser, the reference, say what is wrong.
            smap = SourceMap(file)
            if len(decoded) <= REPARSE_CHARS:
                data = _compose(_CountingLoader, decoded, smap)
            else:  # reading no further than the line libyaml stopped at (or 1 KiB past it)
                end = decoded.find("\n", at, at + REPARSE_PAST)
                stop = end + 1 if end >= 0 else at + REPARSE_PAST
                try:
                    _compose(_CountingLoader, decoded[:stop], smap)
                except yaml.YAMLError as slow_error:
                    if _error_index(slow_error) <= at:
                        raise
                raise fast_error from None  # the reference did not find it first
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        problem = exc.problem or exc.context or "invalid YAML"
        raise DescriptionError(f"YAML syntax: {problem}", where) from None
    except yaml.YAMLError as exc:
        raise DescriptionError(f"YAML: {str(exc).splitlines()[0]}", file) from None
    except RecursionError:
        raise DescriptionError("YAML nested too deeply", file) from None
    if not isinstance(data, dict):
        raise DescriptionError(
            "a description is a YAML mapping (name:, vcpus:, memory:, ...)", smap.locate(())
        )
    _check_schema(data, smap)
    try:
        desc = _build(data)
        desc = profiles.apply(desc, frozenset(smap.values))
        check_consistent(desc)
    except DescriptionError as err:
        raise smap.resolve(err) from None
    return LoadedDescription(desc, smap, text)


def load(path: str | Path) -> LoadedDescription:
    """Read and parse a description file (refused by size before it is read, see :mod:`inputs`)."""
    return loads(
        read_bounded(path, MAX_FILE_BYTES, DescriptionError, "descriptions"), display_name(path)
    )
