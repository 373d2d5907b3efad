"""YAML composed with its marks into plain data, and a SourceMap of where each key path was written.

The YAML is composed (not constructed) with PyYAML's safe loader, libyaml's when PyYAML has
it, so every value keeps its mark; a document libyaml refuses is parsed again by the
pure-Python reference loader for a clearer message.  Node counts, huge numbers and values
PyYAML cannot build are refused at their ``file:line:column``.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

from pvdesc.core.units import MAX_QUANTITY_BITS
from pvdesc.errors import DescriptionError, KeyPath, PvdescError, format_keypath, short

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


class SourceMap(NamedTuple):
    """Where each key path of a description was written.

    Its two tables are filled in while the YAML is composed (start with empty ones:
    ``SourceMap(file, {}, {})``), then only read.

    Attributes:
        file: the description's path as given.
        values: key path -> (line, column), 1-based, of the value.
        keys: key path -> (line, column) of the mapping key itself.
    """

    file: str
    values: dict[KeyPath, tuple[int, int]]
    keys: dict[KeyPath, tuple[int, int]]

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


def _mark(smap: SourceMap, node: yaml.Node) -> str:
    return f"{smap.file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


_STR_TAG = "tag:yaml.org,2002:str"


def _cache_resolve(loader: _Loader) -> None:
    """Resolve each distinct plain scalar's tag once per document (keys repeat hundreds of times).

    The tag of a plain scalar is a function of its text alone (the first implicit
    resolver whose pattern matches) while the loader has no path resolvers, as safe
    loaders have none; the composer asks for every scalar: 1,500 regex searches for
    the 200-device benchmark description.
    """
    if loader.yaml_path_resolvers:
        return
    resolve: Any = loader.resolve  # untyped in PyYAML's stubs
    tags: dict[str, str] = {}

    def cached(kind: type[yaml.Node], value: str, implicit: tuple[bool, bool]) -> str:
        if kind is not yaml.ScalarNode or not implicit[0]:
            return str(resolve(kind, value, implicit))
        tag = tags.get(value)
        if tag is None:
            tag = tags[value] = str(resolve(kind, value, implicit))
        return tag

    loader.resolve = cached  # type: ignore[method-assign]


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
    if node.tag == _STR_TAG:  # what construct_yaml_str returns, without its three calls
        return node.value
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
    _cache_resolve(loader)
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


def compose(decoded: str, file: str) -> tuple[Any, SourceMap]:
    """The single YAML document in ``decoded`` as plain data, and where each key path was written.

    Every YAML error becomes a :class:`DescriptionError` at its ``file:line:column``.
    """
    smap = SourceMap(file, {}, {})
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
            smap = SourceMap(file, {}, {})
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
    return data, smap
