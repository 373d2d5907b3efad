"""pvdesc: place and describe the arm64 KVM stolen-time region.

KVM's paravirtualised stolen time (Arm DEN0057A, Linux
``Documentation/virt/kvm/arm/pvtime.rst``) gives every vCPU a 64-byte structure
in guest memory that the hypervisor keeps writing.  pvdesc allocates that region
from a YAML description of a VM and emits a matched pair: the firmware
description (devicetree, ACPI, or a deliberate omission) and the hypervisor
configuration (memslots, per-vCPU IPAs), proven never to let the region overlap
RAM the guest was told it may use.

Layers, each with its own error class (see :mod:`pvdesc.errors`):

- :mod:`pvdesc.kvm`: the KVM/SMCCC ABI facts (constants, with sources).
- :mod:`pvdesc.core.model`: the immutable description of a VM.
- :mod:`pvdesc.description.load`: YAML -> model, with file:line:column errors.
- :mod:`pvdesc.layout.allocate`: the pure allocation rules ->
  :class:`pvdesc.layout.allocate.Layout`.
- :mod:`pvdesc.emit.devicetree`: Layout -> DTS/DTB (the only module that touches ``fdt``).
- :mod:`pvdesc.read.dtb`: reading untrusted DTBs with libfdt.
- :mod:`pvdesc.emit.hypervisor`: Layout -> hypervisor config JSON.
- :mod:`pvdesc.description.profiles`, :mod:`pvdesc.emit.vmmconfig`: VMM memory maps as data; their
  command lines.
- :mod:`pvdesc.emit.patch`: ``build --into``, patching a VMM's own DTB.
- :mod:`pvdesc.emit.acpi`, :mod:`pvdesc.tools.acpica`: SSDT/SRAT, and the iasl/acpiexec wrapper.
- :mod:`pvdesc.read.acpitables`: decoding SRAT and ``_CRS`` claims from AML.
- :mod:`pvdesc.audit.check`: findings for any DTB + region (``pvdesc check``).
- :mod:`pvdesc.audit.diff`: migration compatibility of two layouts (``pvdesc diff``).
- :mod:`pvdesc.commands.prove.guest`: booting a real arm64 guest under QEMU.
- :mod:`pvdesc.tools.proc`: the one way tools are run (process groups, timeouts, stderr).
- :mod:`pvdesc.tools.inputs`: reading untrusted files within a size limit.
- :mod:`pvdesc.emit.build`: all outputs; :mod:`pvdesc.emit.publish` switches them in as one
  generation.
- :mod:`pvdesc.commands.validate.fleet`, :mod:`pvdesc.tools.validators`,
  :mod:`pvdesc.commands.validate.reports`: ``pvdesc validate``
  (CI: every description built, checked and run through dtc, dt-validate and ACPICA).
- :mod:`pvdesc.commands.cli`: the ``pvdesc`` command (also ``python -m pvdesc``).
- :mod:`pvdesc.api`: the stable Python API for build scripts (imported only when asked for).
"""

__version__ = "0.1.0"
