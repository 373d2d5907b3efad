"""Load a YAML VM description into the model, with file:line:column on every error.

The bytes are composed with their marks (:mod:`pvdesc.description.marks`), checked against
the JSON Schema shipped in ``pvdesc/description/schema/description.schema.json``
(:mod:`pvdesc.description.schema_check`) and converted here to a
:class:`~pvdesc.core.model.VmDescription`.  The :class:`SourceMap` maps key paths back to
``file:line:column`` so that errors raised later (by :mod:`pvdesc.core.model` or
:mod:`pvdesc.layout.allocate`, which only know key paths) can name the place too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from pvdesc import kvm

# parse_quantity lives in core.units (``pvdesc check`` parses --region without YAML).
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
from pvdesc.core.units import parse_quantity
from pvdesc.description import profiles, schema_check
from pvdesc.description.marks import FAST_LOADER as FAST_LOADER
from pvdesc.description.marks import MAX_FILE_BYTES as MAX_FILE_BYTES
from pvdesc.description.marks import SourceMap, compose
from pvdesc.errors import DescriptionError, KeyPath
from pvdesc.tools.inputs import display_name, read_bounded, too_big


class LoadedDescription(NamedTuple):
    """A parsed, validated description and where it came from.

    Attributes:
        description: the model.
        source: the source map for error locations.
        text: the exact bytes read (the manifest records their hash).
    """

    description: VmDescription
    source: SourceMap
    text: bytes


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


def loads(text: bytes, file: str = "<description>") -> LoadedDescription:
    """Parse and validate description bytes; errors carry ``file:line:col``."""
    if len(text) > MAX_FILE_BYTES:
        raise DescriptionError(too_big(len(text), MAX_FILE_BYTES, "descriptions"), file)
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = text[: exc.start].count(b"\n") + 1
        raise DescriptionError(f"not UTF-8 text (byte {exc.start})", f"{file}:{line}:1") from None
    data, smap = compose(decoded, file)
    if not isinstance(data, dict):
        raise DescriptionError(
            "a description is a YAML mapping (name:, vcpus:, memory:, ...)", smap.locate(())
        )
    schema_check.check(data, smap)
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
