"""What EDK2 (ArmVirtPkg, OVMF's FDT drivers) puts in the UEFI memory map from a devicetree.

Under ``uefi-dt`` and ``uefi-acpi`` EDK2 builds the UEFI memory map from the
devicetree's memory nodes and uses that RAM itself before the OS starts; the OS
then takes its RAM from that map (the arm64 EFI stub deletes the DT's memory
nodes, drivers/firmware/efi/libstub/fdt.c ``update_fdt``).

- ``FindNextMemoryNodeReg`` (EmbeddedPkg/Drivers/FdtClientDxe/FdtClientDxe.c),
  used by ``InitializeHighMemDxe`` (OvmfPkg/Fdt/HighMemDxe/HighMemDxe.c), walks
  *every* node (``fdt_next_node``), matches ``device_type`` with ``AsciiStrCmp``
  (the first string), skips disabled nodes (``IsNodeEnabled``) and reads ``reg``
  as (u64, u64) pairs whatever the cells, ignoring a ``reg`` that is not a
  multiple of 16 bytes; ``linux,usable-memory`` is never read;
- ``QemuVirtMemInfoPeiLibConstructor``
  (ArmVirtPkg/Library/QemuVirtMemInfoLib/QemuVirtMemInfoPeiLibConstructor.c)
  takes the lowest memory node with a 16-byte ``reg`` as the initial system
  memory *without* looking at ``status`` (:func:`_pei_lowest`);
- ``/reserved-memory`` and ``/memreserve/`` do not keep EDK2 off a range (measured:
  EDK2 put Boot Data and Conventional memory over a no-map child), so they are
  kept only to name them in findings.
"""

from __future__ import annotations

from collections.abc import Sequence

from pvdesc.core.ranges import Labelled, Range

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:  # only named in annotations: a build never loads libfdt
    from pvdesc.read.dtb import DeviceTree, MemoryNode


def edk2_ram(tree: DeviceTree) -> list[Labelled]:
    """EDK2's memory: every enabled memory node's raw ``reg``, plus PEI's lowest node."""
    out: list[Labelled] = []
    for node in tree.memory_nodes:
        if node.available and node.raw_reg is not None and not node.pei_only:
            out.extend(
                Labelled(r, f"{node.path} reg[{i}]", node.numa_node)
                for i, r in enumerate(node.raw_reg)
                if r.size > 0
            )
    lowest = _pei_lowest(tree.memory_nodes)
    if lowest is not None and lowest[1].size > 0:
        node, r = lowest
        if node.pei_only:
            why = "device_type matched by PEI's AsciiStrnCmp"
            out.append(Labelled(r, f"{node.path} reg[0] ({why})", node.numa_node))
        elif not node.available:
            out.append(Labelled(r, f"{node.path} reg[0] (status ignored by PEI)", node.numa_node))
    return out


def _pei_lowest(nodes: Sequence[MemoryNode]) -> tuple[MemoryNode, Range] | None:
    """QemuVirtMemInfoPeiLibConstructor's pick: ``NewBase > CurBase || NewBase == 0``.

    Only a ``reg`` of exactly two u64 (16 bytes) is read; ``status`` is not looked at,
    and ``device_type`` is compared with ``AsciiStrnCmp`` over the property's length
    (:func:`pvdesc.read.dtb.pei_type_matches`, the nodes marked ``pei_only``).  EDK2 then
    uses ``NewSize`` from its fixed ``PcdSystemMemoryBase``; pvdesc takes the node's
    own range, which is the same whenever the tree is one EDK2 can boot.
    """
    best: tuple[MemoryNode, Range] | None = None
    new_base = 0
    for node in nodes:
        if node.raw_reg is None or len(node.raw_reg) != 1:
            continue
        cur = node.raw_reg[0]
        if new_base > cur.base or new_base == 0:
            best, new_base = (node, cur), cur.base
    return best
