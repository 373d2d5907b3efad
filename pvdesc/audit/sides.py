"""The two ends of ``pvdesc diff``: a VM description or a hypervisor config, as a :class:`Side`.

Which of the two a file is, is decided by its content (:func:`kind`), never by its
name.  A config is read by :mod:`pvdesc.emit.hypervisor`'s reader; a description is
allocated and taken straight from its layout (:func:`side_from_layout`), with what
its firmware description tells the guest is RAM.
"""

from __future__ import annotations

import enum
import json
from itertools import islice
from typing import NamedTuple

import yaml

from pvdesc import kvm
from pvdesc.core.model import Memslot, Purpose, Target
from pvdesc.core.ranges import Range
from pvdesc.description.load import FAST_LOADER, loads
from pvdesc.emit import hypervisor
from pvdesc.errors import PvdescError
from pvdesc.layout import allocate as layout


class DiffInputError(PvdescError):
    """One side of ``pvdesc diff`` cannot be used."""


class Side(NamedTuple):
    """One end of a migration: what the hypervisor programs (a :class:`Target`'s fields) and what
    the guest knows.

    Attributes:
        region: the stolen-time region.
        vcpu_ipas: ``(vcpu id, PVTIME_IPA)`` for every possible vCPU, sorted by vCPU id.
        ipa_bits: the guest's IPA size.
        memslots: every memslot (always known on a side).
        source: the file name.
        revision: the structure revision the config states.
        stride: bytes between consecutive vCPUs' structures.
        usable_ram: what the firmware description tells the guest it may use, or
            ``None`` when only a hypervisor config is known.
        online: vCPUs online at boot (ids ``0..online-1``, the description's
            ``vcpus``), or ``None`` when only a hypervisor config is known.
    """

    region: Range
    vcpu_ipas: tuple[tuple[int, int], ...]
    ipa_bits: int
    memslots: tuple[Memslot, ...]
    source: str
    revision: int
    stride: int
    usable_ram: tuple[Range, ...] | None = None
    online: int | None = None

    @property
    def max_vcpus(self) -> int:
        """Possible vCPUs."""
        return len(self.vcpu_ipas)

    @property
    def region_memslot(self) -> Memslot | None:
        """The memslot that holds the whole region, if any."""
        return next((s for s in self.memslots if s.range.contains(self.region)), None)

    def ram_over(self, r: Range) -> tuple[Range, ...]:
        """The parts of ``r`` the guest may use as RAM (from the memslots when the DT is unknown).

        Without a firmware description, a ``ram`` memslot holding the region is
        taken at its word only when the region is not also the one it carves
        (the config cannot say whether the DT cuts it out).
        """
        if self.usable_ram is not None:
            ram = self.usable_ram
        else:
            home = self.region_memslot
            ram = tuple(
                s.range for s in self.memslots if s.purpose is Purpose.RAM and s is not home
            )
        out = []
        for piece in ram:
            lo, hi = max(piece.base, r.base), min(piece.end, r.end)
            if lo < hi:
                out.append(Range(lo, hi - lo))
        return tuple(sorted(out))


def _side(
    target: Target,
    revision: int,
    stride: int,
    usable_ram: tuple[Range, ...] | None = None,
    online: int | None = None,
) -> Side:
    """``target`` with its vCPUs sorted by id, as a side."""
    return Side(
        region=target.region,
        vcpu_ipas=tuple(sorted(target.vcpu_ipas)),
        ipa_bits=target.ipa_bits,
        memslots=target.memslots or (),
        source=target.source,
        revision=revision,
        stride=stride,
        usable_ram=usable_ram,
        online=online,
    )


def side_from_config(text: bytes, source: str) -> Side:
    """A side from a ``pvdesc.hypervisor/1`` config (validated as ``pvdesc check`` does)."""
    data = hypervisor.config_data(text, source)
    target = hypervisor.target_from_data(data, source)
    ids = [vid for vid, _ in target.vcpu_ipas]
    if len(set(ids)) != len(ids):
        raise DiffInputError("vcpus lists a vCPU id twice", source)
    st = data["stolen_time"]
    return _side(
        target,
        revision=hypervisor.config_int(st, "revision", source, "stolen_time"),
        stride=hypervisor.config_int(st, "stride", source, "stolen_time"),
    )


def side_from_layout(lay: layout.Layout, source: str) -> Side:
    """A side from an allocated layout: what its config states plus what its DT says is RAM."""
    return _side(
        layout.target(lay, source),
        revision=kvm.PVTIME_REVISION,
        stride=kvm.PVTIME_STRUCT_SIZE,
        usable_ram=layout.belief(lay).usable_ram,
        online=lay.description.vcpus,
    )


class InputKind(enum.StrEnum):
    """What one input of ``pvdesc diff`` is."""

    CONFIG = "hypervisor config"
    DESCRIPTION = "VM description"


def _neither(why: str, source: str) -> DiffInputError:
    return DiffInputError(
        f"neither a VM description nor a {hypervisor.FORMAT} hypervisor config: {why}", source
    )


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return "a number"


def kind(data: bytes, source: str) -> InputKind:
    """Decide by content, never by file name, whether ``data`` is a config or a description.

    A hypervisor config is a JSON object whose ``"format"`` is ``pvdesc.hypervisor/1``
    (pvdesc/emit/hypervisor.py writes that key first).  A description is a YAML mapping, and
    YAML is a superset of JSON, so a JSON object without ``"format"`` is a description in
    JSON syntax (descriptions have no such key).  Any other JSON value, a JSON object
    with another format, and YAML whose top node is not a mapping are neither:
    :class:`DiffInputError`.  Text that is not JSON is looked at only as far as its
    first key: ``format`` there means a config broken as JSON, anything else a
    description; their readers then say what is wrong and where.
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return _kind_of_text(data, source)
    if not isinstance(doc, dict):
        raise _neither(f"the JSON value is {_json_type(doc)}, not an object", source)
    if "format" not in doc:
        return InputKind.DESCRIPTION
    if doc["format"] != hypervisor.FORMAT:
        shown = json.dumps(doc["format"])
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise _neither(f'"format" is {shown}', source)
    return InputKind.CONFIG


def _kind_of_text(data: bytes, source: str) -> InputKind:
    """:func:`kind` for what is not JSON, from its first YAML events (never composed)."""
    try:
        events = list(islice(yaml.parse(data.decode("utf-8"), Loader=FAST_LOADER), 4))
    except (UnicodeDecodeError, yaml.YAMLError):
        return InputKind.DESCRIPTION  # the loader names the bad byte or where the syntax breaks
    top = events[2] if len(events) > 2 else None
    if isinstance(top, yaml.MappingStartEvent):
        first = events[3] if len(events) > 3 else None
        if isinstance(first, yaml.ScalarEvent) and first.value == "format":
            return InputKind.CONFIG  # its JSON reader says where the JSON breaks
        return InputKind.DESCRIPTION
    if isinstance(top, yaml.AliasEvent):
        return InputKind.DESCRIPTION  # the loader says the alias is undefined
    if isinstance(top, yaml.ScalarEvent):
        what = "a scalar"
    elif isinstance(top, yaml.SequenceStartEvent):
        what = "a list"
    else:
        what = "empty"
    raise _neither(
        f"its YAML is {what}, not a mapping (name:, vcpus:, memory:, ...) or a JSON object",
        source,
    )


def side_from_bytes(data: bytes, source: str) -> Side:
    """A side from a file's bytes: a hypervisor config, or a description (allocated here)."""
    if kind(data, source) is InputKind.CONFIG:
        return side_from_config(data, source)
    loaded = loads(data, source)
    try:
        lay = layout.allocate(loaded.description)
    except PvdescError as err:
        raise loaded.source.resolve(err) from None
    return side_from_layout(lay, source)
