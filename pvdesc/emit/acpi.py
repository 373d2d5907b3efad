"""ACPI outputs for ``describe: acpi``: an SSDT claiming the region and, with NUMA, an SRAT.

No ACPI table can take RAM away from an arm64 guest: it takes RAM only from the
UEFI memory map, which EDK2 builds from the DT ``/memory`` nodes alone
(docs/acpi.md §0, §1.1, §2).  The layout therefore keeps the region outside every
``/memory`` node, and the tables here only say what the region is:

- **SSDT** (``templates/ssdt.asl.j2``): ``\\_SB.PVTM``, ``_HID`` ``PNP0C02``
  ("General ID for reserving resources", Linux ``drivers/acpi/acpi_pnp.c``),
  ``_UID`` ``"PVTIME"``, ``_STA`` 0x0F, and a ``_CRS`` claiming the region as a
  consumer: ``Memory32Fixed`` when it ends at or below 4 GiB, else
  ``QWordMemory(ResourceConsumer, ...)`` (docs/acpi.md §1.3, §6.2).  Linux's
  ``drivers/pnp/system.c`` then marks it busy in ``/proc/iomem`` (measured,
  docs/boot-evidence.md §5).  No ``OperationRegion`` (docs/acpi.md §1.2).
- **SRAT** (``templates/srat.asl.j2``, an iasl data table, docs/acpi.md §4.2), only
  when the description has more than one NUMA node: one Memory Affinity per
  ``/memory`` range (a carved bank appears minus the region, so the region is
  never covered, docs/acpi.md §1.4) and one GICC Affinity per *possible* vCPU.

vCPU-to-node rule (:func:`vcpu_node`): contiguous blocks.  With ``N`` sorted
node ids and ``M = max_vcpus``, vCPU ``i`` belongs to node ``ids[i * N // M]``:
the first ``M/N`` vCPUs to the lowest node, and so on (block sizes differ by at
most one).  This mirrors how physical sockets number their CPUs.  The GICC
Affinity's ACPI Processor UID is the vCPU index, the UID QEMU's and Cloud
Hypervisor's MADT give GICC ``i``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

from pvdesc import __version__
from pvdesc.core.model import VmDescription
from pvdesc.core.ranges import Range
from pvdesc.emit import compiled, templating
from pvdesc.errors import AcpiError
from pvdesc.layout.allocate import Layout, MemoryNode
from pvdesc.tools import signals

#: ``_STA``: present, enabled, shown in UI, functioning (ACPI 6.x §6.3.7).
STA_PRESENT = 0x0F
#: ``_UID`` of ``\\_SB.PVTM``: a string, so it cannot clash with another PNP0C02's
#: integer ``_UID`` (Cloud Hypervisor's ``_SB_.MBRD`` uses 0, docs/acpi.md §1.6).
UID = "PVTIME"
#: ``Memory32Fixed`` holds a 32-bit base and length: used when the region ends at or below 4 GiB.
FOUR_GIB = 1 << 32
#: Characters that cannot appear inside an ASL string literal without escaping.
_ASL_UNSAFE = frozenset('"\\')

SSDT_TEMPLATE = "ssdt.asl.j2"
SRAT_TEMPLATE = "srat.asl.j2"


class GiccAffinity(NamedTuple):
    """One SRAT GICC Affinity entry.

    Attributes:
        uid: ACPI Processor UID (= vCPU index).
        node: proximity domain (NUMA node id).
    """

    uid: int
    node: int


class Table(NamedTuple):
    """One generated ACPI table.

    Attributes:
        kind: ``ssdt`` or ``srat`` (also the file-name infix).
        source: the ASL / data-table text rendered from the template.
        aml: the compiled bytes.
    """

    kind: str
    source: str
    aml: bytes


def needs_srat(desc: VmDescription) -> bool:
    """True when the description has more than one NUMA node."""
    return len(desc.numa_nodes) > 1


def vcpu_node(desc: VmDescription, vcpu: int) -> int:
    """The NUMA node of ``vcpu`` under the contiguous-blocks rule (module docstring)."""
    nodes = desc.numa_nodes
    if not nodes:
        return 0
    return nodes[vcpu * len(nodes) // desc.max_vcpus]


def gicc_affinities(desc: VmDescription) -> tuple[GiccAffinity, ...]:
    """One entry per possible vCPU, 0..max_vcpus-1."""
    return tuple(GiccAffinity(i, vcpu_node(desc, i)) for i in range(desc.max_vcpus))


def memory_affinities(layout: Layout) -> tuple[MemoryNode, ...]:
    """The ``/memory`` ranges (RAM banks, minus the region where carved).

    Raises :class:`AcpiError` if one would cover the region: the layout must
    never produce that, and an SRAT entry over it would be a lie about RAM.
    """
    for node in layout.memory_nodes:
        if node.range.overlaps(layout.region):
            raise AcpiError(f"internal: memory range {node.range} covers region {layout.region}")
        if node.numa_node is None:
            raise AcpiError(f"internal: memory range {node.range} has no NUMA node")
    return layout.memory_nodes


def _check_ids(desc: VmDescription) -> None:
    ids = desc.acpi
    for key, value in (("oem_id", ids.oem_id), ("oem_table_id", ids.oem_table_id)):
        if _ASL_UNSAFE & set(value):
            raise AcpiError(
                f"{key} {value!r} may not contain '\"' or '\\' (they cannot appear in an ASL "
                "string)",
                ("acpi", key),
            )


def ssdt_source(layout: Layout) -> str:
    """The SSDT's ASL text."""
    desc = layout.description
    _check_ids(desc)
    region: Range = layout.region
    return templating.render(
        SSDT_TEMPLATE,
        desc=desc,
        ids=desc.acpi,
        version=__version__,
        region=region,
        below_4g=region.end <= FOUR_GIB,
        uid=UID,
        sta=STA_PRESENT,
    )


def srat_source(layout: Layout) -> str:
    """The SRAT's data-table text (only meaningful with more than one NUMA node)."""
    desc = layout.description
    _check_ids(desc)
    return templating.render(
        SRAT_TEMPLATE,
        desc=desc,
        ids=desc.acpi,
        version=__version__,
        region=layout.region,
        memory=memory_affinities(layout),
        cpus=gicc_affinities(desc),
    )


@contextlib.contextmanager
def compiling(
    layout: Layout,
) -> Iterator[tuple[tuple[tuple[str, str], ...], Callable[[], tuple[Table, ...]]]]:
    """Render every ACPI table and start iasl on each; the block gets the sources and a wait.

    The block gets ``(kind, source)`` for each table, in the order of the tables, and a
    function to wait.  The caller works while iasl runs (``pvdesc build`` renders the DT
    and writes what it can meanwhile), then calls the function for the tables (SSDT,
    then SRAT with NUMA), which raises the SSDT's error first, as if they had been
    compiled in order.  The
    SRAT, thousands of lines for hundreds of vCPUs and most of iasl's time, is
    started first.  Leaving the block stops any iasl not waited for and removes
    its temporary directory; nothing is written to the output directory.  In a
    :func:`pvdesc.emit.compiled.remembering` block a table compiled before is not
    compiled again.
    """
    srat = srat_source(layout) if needs_srat(layout.description) else None
    with contextlib.ExitStack() as stack:
        # A stopping signal (pvdesc.tools.signals) is held back until each started iasl is
        # on the stack that stops it: between the two, it left iasl running.
        with signals.deferred():
            srat_job = (
                compiled.start(srat, template=SRAT_TEMPLATE, name="srat")
                if srat is not None
                else None
            )
            if srat_job is not None:
                stack.enter_context(srat_job)
        signals.raise_pending()
        ssdt = ssdt_source(layout)  # once the SRAT, the longer compilation, has started
        with signals.deferred():
            ssdt_job = compiled.start(ssdt, template=SSDT_TEMPLATE, name="ssdt")
            stack.enter_context(ssdt_job)
        signals.raise_pending()

        def wait() -> tuple[Table, ...]:
            out = [Table("ssdt", ssdt, ssdt_job.aml())]
            if srat is not None and srat_job is not None:
                out.append(Table("srat", srat, srat_job.aml()))
            return tuple(out)

        sources = (("ssdt", ssdt),) if srat is None else (("ssdt", ssdt), ("srat", srat))
        yield sources, wait


def tables(layout: Layout) -> tuple[Table, ...]:
    """Render and compile every ACPI table for a layout (SSDT, then SRAT with NUMA)."""
    with compiling(layout) as (_sources, wait):
        return wait()
