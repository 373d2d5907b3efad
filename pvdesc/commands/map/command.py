"""The ``pvdesc map`` command: inputs to an address map, the colour decision, files written.

:func:`from_description` and :func:`from_dtb` read the command's inputs and build the
map (:mod:`pvdesc.commands.map.sources`, :mod:`pvdesc.commands.map.rows`); :func:`run`
renders every requested file (:mod:`pvdesc.commands.map.draw`) before writing any,
through :func:`pvdesc.emit.build.write_outputs` (temp file + fsync + rename), and
returns the terminal text (:mod:`pvdesc.commands.map.terminal`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from pathlib import Path

from pvdesc.commands.map.draw import render_html, render_svg
from pvdesc.commands.map.model import AddressMap
from pvdesc.commands.map.rows import build
from pvdesc.commands.map.terminal import render_text
from pvdesc.emit.build import Output, write_outputs
from pvdesc.errors import PvdescError


class ColorMode(enum.StrEnum):
    """``--color``: ``auto`` colours only a terminal, and only without ``NO_COLOR``."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


def use_color(mode: ColorMode, isatty: bool, environ: Mapping[str, str]) -> bool:
    """Whether to colour: ``always``/``never`` win; ``auto`` needs a TTY and no ``NO_COLOR``.

    https://no-color.org: ``NO_COLOR`` set to a non-empty value disables colour.
    """
    if mode is ColorMode.ALWAYS:
        return True
    if mode is ColorMode.NEVER:
        return False
    return isatty and not environ.get("NO_COLOR")


def outputs(
    amap: AddressMap, svg: Path | None, html: Path | None
) -> tuple[tuple[Path, Output], ...]:
    """Render the requested files (no I/O): ``(directory, Output)`` pairs."""
    out: list[tuple[Path, Output]] = []
    if svg is not None:
        out.append((svg.parent, Output(svg.name, "svg", render_svg(amap).encode())))
    if html is not None:
        out.append((html.parent, Output(html.name, "html", render_html(amap).encode())))
    return tuple(out)


def write(files: Sequence[tuple[Path, Output]]) -> None:
    """Write rendered files atomically, one directory at a time."""
    by_dir: dict[Path, list[Output]] = {}
    for directory, out in files:
        by_dir.setdefault(directory, []).append(out)
    for directory in by_dir:
        write_outputs(directory, ())  # create every directory before writing any file
    for directory, outs in by_dir.items():
        write_outputs(directory, outs)


def from_description(path: str | Path) -> AddressMap:
    """Load and allocate a description and map it; errors name file:line:column."""
    from pvdesc.commands.map.sources import layout_source
    from pvdesc.description.load import load
    from pvdesc.layout import allocate as layout

    loaded = load(path)
    try:
        lay = layout.allocate(loaded.description)
    except PvdescError as err:
        raise loaded.source.resolve(err) from None
    return build(layout_source(lay))


def from_dtb(
    path: str, region: str, vcpus: int | None, ipa_bits: int | None, boot: str
) -> AddressMap:
    """Read a DTB, check it against ``--region`` and map it with the findings inline.

    Without ``vcpus`` the region is taken to be full: ``size // 64`` structures
    (at most ``KVM_MAX_VCPUS``).
    """
    from pvdesc import kvm
    from pvdesc.audit import check
    from pvdesc.commands.map.sources import dtb_source
    from pvdesc.core.model import Boot
    from pvdesc.read import dtb
    from pvdesc.tools.inputs import display_name

    tree = dtb.load(path)
    bits = kvm.IPA_BITS_DEFAULT if ipa_bits is None else ipa_bits
    if vcpus is None:
        probe = check.target_from_region(region, 1, bits)
        vcpus = max(1, min(probe.region.size // kvm.PVTIME_STRUCT_SIZE, kvm.KVM_MAX_VCPUS))
    target = check.target_from_region(region, vcpus, bits)
    findings = check.check(tree, target, Boot(boot))
    try:
        return build(dtb_source(tree, target, Boot(boot), findings))
    except PvdescError as err:
        err.where = err.where or display_name(path)
        raise


def run(amap: AddressMap, *, svg: Path | None, html: Path | None, color: bool) -> str:
    """Render every requested file before writing any, write them, return the terminal text."""
    files = outputs(amap, svg, html)
    text = render_text(amap, color=color)
    write(files)
    return text
