"""The hypervisor config ``pvdesc.hypervisor/1``: written from a layout, read back and validated.

Shape (integers, never strings)::

    {"format": "pvdesc.hypervisor/1", "vm": NAME, "vmm": VMM, "ipa_bits": N,
     "memslots": [{"slot": 0, "guest_phys_addr": A, "memory_size": S,
                   "purpose": "ram" | "stolen-time"}, ...],
     "stolen_time": {"base": A, "size": S, "stride": 64, "revision": 0, "memslot": K},
     "vcpus": [{"id": 0, "pvtime_ipa": A}, ...]}

A VMM creates each memslot with ``KVM_SET_USER_MEMORY_REGION`` and, for every
vCPU, sets ``KVM_ARM_VCPU_PVTIME_CTRL``/``KVM_ARM_VCPU_PVTIME_IPA`` to
``pvtime_ipa`` with ``KVM_SET_DEVICE_ATTR`` on the vCPU fd (vcpu.rst §3).
The writer is :func:`config`/:func:`dumps`; the reader (:func:`target_from_config`)
gives the :class:`Target` that ``check``, ``diff``, ``validate`` and ``prove --kvm``
judge; :func:`pvdesc.layout.allocate.target` gives the same from a layout without the
JSON round trip.
"""

from __future__ import annotations

from pvdesc import kvm
from pvdesc.core.model import Memslot, Purpose, Target
from pvdesc.core.ranges import Range
from pvdesc.errors import PvdescError
from pvdesc.tools.inputs import display_name, read_bounded, too_big

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true):
#: ``pvdesc check`` reads configs without the allocator.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pvdesc.layout.allocate import Layout

FORMAT = "pvdesc.hypervisor/1"
#: A hypervisor config for 512 vCPUs is ~40 KiB; refuse anything much larger.
MAX_CONFIG_BYTES = 4 << 20
#: Memslots a hypervisor config may list: KVM's slot ids are below SHRT_MAX
#: (``KVM_MEM_SLOTS_NUM``, include/linux/kvm_host.h), so a longer list is not a real VM's.
MAX_CONFIG_MEMSLOTS = 1 << 15


class ConfigError(PvdescError):
    """A ``pvdesc.hypervisor/1`` config cannot be used."""


# --------------------------------------------------------------------------- writer


def config(layout: Layout) -> dict[str, Any]:
    """The hypervisor config as plain data."""
    desc = layout.description
    return {
        "format": FORMAT,
        "vm": desc.name,
        "vmm": str(desc.vmm),
        "ipa_bits": desc.ipa_bits,
        "memslots": [
            {
                "slot": s.slot,
                "guest_phys_addr": s.range.base,
                "memory_size": s.range.size,
                "purpose": str(s.purpose),
            }
            for s in layout.memslots
        ],
        "stolen_time": {
            "base": layout.region.base,
            "size": layout.region.size,
            "stride": kvm.PVTIME_STRUCT_SIZE,
            "revision": kvm.PVTIME_REVISION,
            "memslot": layout.region_memslot,
        },
        "vcpus": [{"id": i, "pvtime_ipa": ipa} for i, ipa in enumerate(layout.vcpu_ipas)],
    }


def dumps(layout: Layout) -> str:
    """The config as JSON text (stable key order, trailing newline)."""
    import json

    return json.dumps(config(layout), indent=2) + "\n"


# --------------------------------------------------------------------------- reader


def config_int(data: Any, key: str, file: str, where: str) -> int:
    """``data[key]`` of a hypervisor config, a non-negative integer, else an error at ``file``."""
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where}.{key} must be a non-negative integer", file)
    return value


def _purpose(data: Any, file: str, where: str) -> Purpose:
    value = data.get("purpose") if isinstance(data, dict) else None
    if not isinstance(value, str) or value not in set(Purpose):
        raise ConfigError(f'{where}.purpose must be "ram" or "stolen-time"', file)
    return Purpose(value)


def read_target(path: str) -> Target:
    """A config file (``-``: standard input), read within :data:`MAX_CONFIG_BYTES`, validated."""
    data = read_bounded(path, MAX_CONFIG_BYTES, ConfigError, "hypervisor configs")
    return target_from_config(data, display_name(path))


def target_from_config(text: bytes, file: str) -> Target:
    """A ``pvdesc.hypervisor/1`` config's bytes, validated field by field."""
    return target_from_data(config_data(text, file), file)


def config_data(text: bytes, file: str) -> dict[str, Any]:
    """A hypervisor config's JSON object (size, syntax and ``format`` checked)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(too_big(len(text), MAX_CONFIG_BYTES, "hypervisor configs"), file)
    import json

    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"not JSON: {str(exc).splitlines()[0]}", file) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f'not a hypervisor config: "format" is not "{FORMAT}"', file)
    return data


def target_from_data(data: dict[str, Any], file: str) -> Target:
    """:func:`target_from_config` for the config's parsed JSON object (:func:`config_data`)."""
    ipa_bits = config_int(data, "ipa_bits", file, "config")
    if not kvm.IPA_BITS_MIN <= ipa_bits <= kvm.IPA_BITS_MAX:
        raise ConfigError(f"ipa_bits {ipa_bits} is not {kvm.IPA_BITS_MIN}..52", file)
    st = data.get("stolen_time")
    region = Range(
        config_int(st, "base", file, "stolen_time"), config_int(st, "size", file, "stolen_time")
    )
    raw_slots = data.get("memslots")
    raw_vcpus = data.get("vcpus")
    if not isinstance(raw_slots, list) or not isinstance(raw_vcpus, list) or not raw_vcpus:
        raise ConfigError("memslots and vcpus must be non-empty lists", file)
    if len(raw_vcpus) > kvm.KVM_MAX_VCPUS or len(raw_slots) > MAX_CONFIG_MEMSLOTS:
        raise ConfigError(
            f"too many vcpus or memslots ({len(raw_vcpus)} vcpus, {len(raw_slots)} memslots): "
            f"hypervisor configs are limited to {kvm.KVM_MAX_VCPUS} vcpus (KVM_MAX_VCPUS) and "
            f"{MAX_CONFIG_MEMSLOTS} memslots",
            file,
        )
    slots = tuple(
        Memslot(
            config_int(s, "slot", file, f"memslots[{i}]"),
            Range(
                config_int(s, "guest_phys_addr", file, f"memslots[{i}]"),
                config_int(s, "memory_size", file, f"memslots[{i}]"),
            ),
            _purpose(s, file, f"memslots[{i}]"),
        )
        for i, s in enumerate(raw_slots)
    )
    ipas = tuple(
        (config_int(v, "id", file, f"vcpus[{i}]"), config_int(v, "pvtime_ipa", file, f"vcpus[{i}]"))
        for i, v in enumerate(raw_vcpus)
    )
    return Target(region, ipas, ipa_bits, slots, file)
