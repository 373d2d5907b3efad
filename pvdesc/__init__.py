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
- :mod:`pvdesc.model`: the immutable description of a VM.
- :mod:`pvdesc.description`: YAML -> model, with file:line:column errors.
- :mod:`pvdesc.layout`: the pure allocation rules -> :class:`pvdesc.layout.Layout`.
- :mod:`pvdesc.dt`: Layout -> DTS/DTB (the only module that touches ``fdt``).
- :mod:`pvdesc.dtb`: reading untrusted DTBs with libfdt.
- :mod:`pvdesc.hypervisor`: Layout -> hypervisor config JSON.
- :mod:`pvdesc.profiles`, :mod:`pvdesc.vmmconfig`: VMM memory maps as data; their command lines.
- :mod:`pvdesc.patch`: ``build --into``, patching a VMM's own DTB.
- :mod:`pvdesc.acpi`, :mod:`pvdesc.acpica`: SSDT/SRAT, and the iasl/acpiexec wrapper.
- :mod:`pvdesc.acpitables`: decoding SRAT and ``_CRS`` claims from AML.
- :mod:`pvdesc.check`: findings for any DTB + region (``pvdesc check``).
- :mod:`pvdesc.diff`: migration compatibility of two layouts (``pvdesc diff``).
- :mod:`pvdesc.guest`: booting a real arm64 guest under QEMU.
- :mod:`pvdesc.proc`: the one way tools are run (process groups, timeouts, stderr).
- :mod:`pvdesc.inputs`: reading untrusted files within a size limit.
- :mod:`pvdesc.build`: all outputs; :mod:`pvdesc.publish` switches them in as one generation.
- :mod:`pvdesc.validate`, :mod:`pvdesc.validators`, :mod:`pvdesc.reports`: ``pvdesc validate``
  (CI: every description built, checked and run through dtc, dt-validate and ACPICA).
- :mod:`pvdesc.cli`: the ``pvdesc`` command (also ``python -m pvdesc``).
- :mod:`pvdesc.api`: the stable Python API for build scripts (imported only when asked for).
"""

__version__ = "0.1.0"
