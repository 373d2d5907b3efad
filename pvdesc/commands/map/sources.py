"""What a map is drawn from: a :class:`~pvdesc.commands.map.model.MapSource` of a layout or a DTB.

The map is a consumer: it reads what the layers below decided (the layout and its
:func:`~pvdesc.layout.allocate.verify`; what the boot consumer believes of a DTB,
:func:`pvdesc.layout.beliefs.believe`; ``check``'s findings) and never decides
anything itself.  Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from pvdesc.commands.map.model import MapSource
from pvdesc.core.findings import Finding, Severity
from pvdesc.core.model import Boot, Describe, Memslot, Purpose, Target
from pvdesc.core.ranges import Labelled
from pvdesc.errors import LayoutError
from pvdesc.layout import beliefs
from pvdesc.layout.allocate import Layout, verify
from pvdesc.read.dtb import DeviceTree

#: The code of the finding a layout gets when :func:`~pvdesc.layout.allocate.verify`
#: refuses it (its message is verify's, which names check's code).
LAYOUT_UNSAFE = "layout-unsafe"


def layout_source(lay: Layout) -> MapSource:
    """A layout's map source; :func:`pvdesc.layout.allocate.verify`'s verdict becomes a finding."""
    desc = lay.description
    findings: list[Finding] = []
    try:
        verify(lay)
    except LayoutError as err:
        findings.append(Finding(Severity.ERROR, LAYOUT_UNSAFE, err.message, lay.region))
    facts = (
        ("boot", str(desc.boot)),
        ("ipa", f"{desc.ipa_bits}-bit"),
        ("vcpus", f"{desc.vcpus} (max {desc.max_vcpus})"),
        ("placement", str(lay.placement)),
        ("describe", str(lay.describe)),
        ("region memslot", str(lay.region_memslot)),
    )
    return MapSource(
        title=desc.name,
        facts=facts,
        ram=tuple(Labelled(b.range, f"memory[{b.index}]", b.numa_node) for b in desc.memory),
        devices=tuple(Labelled(d.range, d.name) for d in desc.devices),
        memory_nodes=tuple(n.range for n in lay.memory_nodes),
        reserved=lay.reserved,
        acpi_claims=(lay.region,) if lay.describe is Describe.ACPI else (),
        memslots=lay.memslots,
        region=lay.region,
        structures=desc.max_vcpus,
        limit=desc.ipa_limit,
        findings=tuple(findings),
    )


def dtb_source(
    tree: DeviceTree, target: Target, boot: Boot, findings: Sequence[Finding]
) -> MapSource:
    """A foreign DTB's map source: the RAM, no-map holes and device windows the boot
    consumer believes (:func:`pvdesc.layout.beliefs.believe`, the model ``check`` judges).

    ``findings`` are :func:`pvdesc.audit.check.check`'s; errors and warnings are shown
    inline, as ``code: message`` (informational ones are not problems).
    """
    belief = beliefs.believe(tree, boot)
    memory = tuple(belief.ram)
    devices = tuple(Labelled(a.range, a.label) for a in belief.devices)
    limit = max([1 << target.ipa_bits, *(s.range.end for s in memory)])
    limit = max([limit, target.region.end, *(d.range.end for d in devices)])
    facts = (
        ("dtb", tree.file),
        ("boot", str(boot)),
        ("ipa", f"{target.ipa_bits}-bit"),
        ("vcpus", str(len(target.vcpu_ipas))),
        ("region from", target.source),
    )
    return MapSource(
        title=tree.file.rsplit("/", 1)[-1],
        facts=facts,
        ram=memory,
        devices=devices,
        memory_nodes=tuple(s.range for s in memory),
        reserved=tuple(a.range for a in belief.no_map),
        acpi_claims=(),
        memslots=tuple(Memslot(m.slot, m.range, Purpose(m.purpose)) for m in target.memslots or ()),
        region=target.region,
        structures=len(target.vcpu_ipas),
        limit=limit,
        findings=tuple(
            Finding(f.severity, f.code, f"{f.code}: {f.message}", f.range, f.source)
            for f in findings
            if f.severity is not Severity.INFO
        ),
    )
