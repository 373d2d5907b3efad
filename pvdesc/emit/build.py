"""``pvdesc build``: every output for a description, rendered in memory, published atomically.

The outputs are published as one generation (:mod:`pvdesc.emit.publish`): whatever
instant a build is killed at, the directory holds the old complete outputs or the
new complete outputs, never a mix, and the manifest (which pairs the files and
records their hashes) lets a consumer check that what it read belongs together.

iasl (``describe: acpi``) is the slowest step of a build, so it starts first: only
what loading, allocating and rendering the ACPI sources needs is imported before
it (the DT writer, hashing, JSON, publishing and the VMM files are imported in the
functions that use them, after iasl has started).  While iasl runs, every other
output is rendered and then handed to :func:`pvdesc.emit.publish.staging`, which
writes it into the new, still invisible generation; the AML files and the
manifest (which hashes them) follow, then the switch.  Nothing touches the
output directory before every output that does not wait for iasl is rendered;
an error after that (iasl failing, a signal) removes what the build staged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pvdesc import __version__
from pvdesc.core.model import Describe
from pvdesc.description import profiles
from pvdesc.description.load import LoadedDescription, load
from pvdesc.emit import acpi, templating
from pvdesc.errors import DTError, OutputError, PvdescError
from pvdesc.layout import allocate as layout
from pvdesc.layout.allocate import Layout
from pvdesc.tools.inputs import display_name, read_bounded


class Output(NamedTuple):
    """One output file.

    Attributes:
        name: file name inside the output directory.
        kind: what it is (dts, dtb, hypervisor-config, ...).
        data: its exact bytes.
    """

    name: str
    kind: str
    data: bytes

    @property
    def sha256(self) -> str:
        import hashlib  # after iasl has started (module docstring)

        return hashlib.sha256(self.data).hexdigest()


class BuildResult(NamedTuple):
    """What a build produced.

    Attributes:
        loaded: the parsed description.
        layout: the allocated layout.
        outputs: every file, manifest last.
    """

    loaded: LoadedDescription
    layout: Layout
    outputs: tuple[Output, ...]


def describe_text(lay: Layout) -> str:
    """How the firmware description keeps the guest off the region, in words."""
    from pvdesc.emit import devicetree as dt  # after iasl has started (module docstring)

    region = lay.region
    if lay.describe is Describe.NONE:
        return "nothing: the region is outside every /memory node (deliberate omission)"
    if lay.describe is Describe.EXCLUDE:
        return (
            f"its absence: /memory is split around {layout.excluded_range(lay.description, region)}"
        )
    if lay.describe is Describe.RESERVED_MEMORY:
        return f"/reserved-memory/{dt.REGION_NODE}@{dt.unit_address(region.base)} (no-map)"
    return "SSDT device \\_SB.PVTM (PNP0C02) claiming it; outside every /memory node"


def render_outputs(
    loaded: LoadedDescription, lay: Layout, into: bytes | None = None, outdir: str = "out"
) -> tuple[Output, ...]:
    """Render every output for a layout, manifest last.

    Nothing touches the output directory (iasl, for describe acpi, runs in a
    temporary directory).

    With ``into`` (a VMM's own DTB), the DTB output is that blob patched for the layout
    (:mod:`pvdesc.emit.patch`) instead of pvdesc's own tree, and no DTS is written.
    """
    with contextlib.ExitStack() as stack:
        _ready, _later, finish = _rendering(loaded, lay, into, outdir, stack)
        return finish()


def _rendering(
    loaded: LoadedDescription,
    lay: Layout,
    into: bytes | None,
    outdir: str,
    stack: contextlib.ExitStack,
) -> tuple[list[Output], list[str], Callable[[], tuple[Output, ...]]]:
    """Start iasl (describe acpi), then render every output that does not wait for it.

    Returns those outputs, the names of the others (AML, manifest) and a function
    that waits for iasl and returns every output in order, manifest last
    (:func:`render_outputs`).  iasl runs in ``stack``: closing it stops an iasl
    nobody waited for.
    """
    desc = lay.description
    compiled = stack.enter_context(acpi.compiling(lay)) if lay.describe is Describe.ACPI else None
    # iasl runs from here on: the DT writer and the VMM files are imported only now.
    from pvdesc.emit import devicetree as dt
    from pvdesc.emit import hypervisor, vmmconfig

    source = Path(loaded.source.file).name
    header = templating.render(
        "dts-header.j2",
        desc=desc,
        layout=lay,
        version=__version__,
        source=source,
        describe_text=describe_text(lay),
    )
    if into is None:
        tree = dt.render(lay, header)
        trees = [
            Output(f"{desc.name}.dts", "dts", tree.dts.encode()),
            Output(f"{desc.name}.dtb", "dtb", tree.dtb),
        ]
    else:
        from pvdesc.emit import patch  # libfdt: only for --into

        trees = [Output(f"{desc.name}.dtb", "dtb", patch.patch_dtb(into, lay))]
    overlay = dt.render_overlay(
        lay, header + templating.render("dtso-note.j2", desc=desc, layout=lay)
    )
    trees += [
        Output(f"{desc.name}.dtso", "dtso", overlay.dts.encode()),
        Output(f"{desc.name}.dtbo", "dtbo", overlay.dtb),
    ]
    config = Output(
        f"{desc.name}.hypervisor.json", "hypervisor-config", hypervisor.dumps(lay).encode()
    )
    dtb_path = str(Path(outdir) / f"{desc.name}.dtb") if into is not None else None
    vmm = [Output(*o) for o in vmmconfig.outputs(lay, source, dtb_path)]
    sources = compiled[0] if compiled is not None else ()
    asl = {k: Output(f"{desc.name}.{k}.dsl", f"{k}-asl", text.encode()) for k, text in sources}

    def finish() -> tuple[Output, ...]:
        outputs = list(trees)
        if compiled is not None:
            for table in compiled[1]():  # SSDT, then SRAT with NUMA: each source, then its AML
                aml = Output(f"{desc.name}.{table.kind}.aml", f"{table.kind}-aml", table.aml)
                outputs += [asl[table.kind], aml]
        outputs.append(config)
        outputs.extend(vmm)
        outputs.append(manifest(loaded, lay, outputs))
        return tuple(outputs)

    later = [f"{desc.name}.{kind}.aml" for kind, _ in sources] + [f"{desc.name}.manifest.json"]
    return [*trees, *asl.values(), config, *vmm], later, finish


def manifest(loaded: LoadedDescription, lay: Layout, outputs: Sequence[Output]) -> Output:
    """The manifest: which files belong together, their hashes, and what they pair with."""
    # After iasl has started (module docstring).
    import hashlib
    import json

    from pvdesc.emit import store

    desc = lay.description
    data: dict[str, Any] = {
        "format": store.MANIFEST_FORMAT,
        "generator": f"pvdesc {__version__}",
        "vm": desc.name,
        "description": {
            "path": loaded.source.file,
            "sha256": hashlib.sha256(loaded.text).hexdigest(),
        },
        "vmm": str(desc.vmm),
        "vmm_version": profiles.for_description(desc).version,
        "boot": str(desc.boot),
        "placement": str(lay.placement),
        "describe": str(lay.describe),
        "region": {"base": lay.region.base, "size": lay.region.size},
        "files": [
            {"path": o.name, "kind": o.kind, "bytes": len(o.data), "sha256": o.sha256}
            for o in outputs
        ],
    }
    text = json.dumps(data, indent=2) + "\n"
    return Output(f"{desc.name}.manifest.json", "manifest", text.encode())


def write_outputs(outdir: Path, outputs: Sequence[Output]) -> None:
    """Write independent files (each one atomically: temp file, fsync, rename, fsync the directory).

    For files the user names one by one (``pvdesc map --svg FILE``).  A build's
    set of files goes through :func:`publish_outputs` instead, which switches
    them all at once.
    """
    from pvdesc.emit import publish

    for out in outputs:
        if out.name in ("", ".", "..") or out.name != Path(out.name).name or "\0" in out.name:
            raise OutputError(f"refusing to write {out.name!r}: not a file name", str(outdir))
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory: {exc.strerror}", str(outdir)) from None
    try:
        for out in outputs:
            publish.write_file_atomic(outdir / out.name, out.data)
    except OSError as exc:
        raise OutputError(f"cannot write outputs: {exc.strerror}", str(outdir)) from None


def publish_outputs(
    outdir: Path, vm: str, outputs: Sequence[Output], *, force: bool = False
) -> None:
    """Publish a build's files as one generation (:func:`pvdesc.emit.publish.publish`)."""
    from pvdesc.emit import publish

    publish.publish(outdir, vm, {o.name: o.data for o in outputs}, force=force)


def read_base_dtb(path: str | Path) -> bytes:
    """The bytes of a VMM's DTB given to ``--into`` (refused by size before it is read)."""
    from pvdesc.read import dtb  # libfdt: only for --into

    return read_bounded(path, dtb.MAX_DTB_BYTES, DTError, "base DTBs", reading="base DTB")


def plan(
    path: str | Path, into: str | Path | None = None, outdir: str | Path = "out"
) -> BuildResult:
    """Load, allocate and render (no writing).  Errors name file:line:column."""
    loaded = load(path)
    base = read_base_dtb(into) if into is not None else None
    return plan_loaded(loaded, base, display_name(into) if into is not None else "", outdir)


def plan_loaded(
    loaded: LoadedDescription,
    base: bytes | None = None,
    base_name: str = "base DTB",
    outdir: str | Path = "out",
) -> BuildResult:
    """:func:`plan` for a description already read (``base``: the ``--into`` DTB's bytes).

    A :class:`~pvdesc.errors.DTError` about the base without a place is named ``base_name``.
    """
    with _placed(loaded, base_name if base is not None else None):
        lay = layout.allocate(loaded.description)
        outputs = render_outputs(loaded, lay, base, str(outdir))
    return BuildResult(loaded, lay, outputs)


@contextlib.contextmanager
def _placed(loaded: LoadedDescription, base_name: str | None) -> Iterator[None]:
    """An error of the block names its place: ``file:line:col``, or ``base_name`` (a DTError)."""
    try:
        yield
    except PvdescError as err:
        if base_name is not None and isinstance(err, DTError) and err.where is None:
            err.where = base_name
        raise loaded.source.resolve(err) from None


def build(
    path: str | Path,
    outdir: str | Path,
    into: str | Path | None = None,
    *,
    force: bool = False,
) -> BuildResult:
    """Plan, then publish every output into ``outdir`` (``into``: patch that VMM DTB).

    ``force`` lets the build replace files in the way that pvdesc did not write.
    Every output that does not wait for iasl is staged while iasl runs (module docstring).
    """
    loaded = load(path)
    base = read_base_dtb(into) if into is not None else None
    place = display_name(into) if into is not None else None
    with contextlib.ExitStack() as stack:
        with _placed(loaded, place):
            lay = layout.allocate(loaded.description)
            ready, later, finish = _rendering(loaded, lay, base, str(outdir), stack)
        from pvdesc.emit import publish  # after iasl has started (module docstring)

        names = frozenset([*(o.name for o in ready), *later])
        with publish.staging(Path(outdir), lay.description.name, names, force=force) as put:
            for out in ready:
                put(out.name, out.data)
            with _placed(loaded, place):
                outputs = finish()
            for out in outputs:
                if out.name in later:
                    put(out.name, out.data)
    return BuildResult(loaded, lay, outputs)


def only(result: BuildResult, suffix: str) -> Output:
    """The output ``NAME.<suffix>`` (``build --only SUFFIX -o -``); an error lists the others."""
    name = result.layout.description.name
    for out in result.outputs:
        if out.name == f"{name}.{suffix}":
            return out
    there = ", ".join(o.name[len(name) + 1 :] for o in result.outputs)
    raise OutputError(f"{name} has no output {name}.{suffix}; it has: {there}", "--only")


def summary(result: BuildResult, outdir: str | Path) -> str:
    """The short human summary ``pvdesc build`` prints."""
    lay = result.layout
    return templating.render(
        "summary.txt.j2",
        desc=lay.description,
        layout=lay,
        describe_text=describe_text(lay),
        rationale=layout.rationale(lay),
        files=[str(Path(outdir) / o.name) for o in result.outputs],
    )
