"""pvdesc: place and describe the arm64 KVM stolen-time region.

KVM's paravirtualised stolen time (Arm DEN0057A, Linux
``Documentation/virt/kvm/arm/pvtime.rst``) gives every vCPU a 64-byte structure
in guest memory that the hypervisor keeps writing.  pvdesc allocates that region
from a YAML description of a VM and emits a matched pair: the firmware
description (devicetree, ACPI, or a deliberate omission) and the hypervisor
configuration (memslots, per-vCPU IPAs), proven never to let the region overlap
RAM the guest was told it may use.

The sub-packages follow the pipeline, each importing only itself and those listed
before it (``tests/unit/test_structure.py`` checks this; the README's "How it is built"
table names every module's job):

- :mod:`pvdesc.errors`, :mod:`pvdesc.kvm`: one error class per layer; the ABI constants.
- :mod:`pvdesc.core`: ranges, sizes, findings and the VM model every layer shares.
- :mod:`pvdesc.tools`: external programs run the one safe way (iasl, acpiexec, QEMU,
  the validators), signals, bounded input.
- :mod:`pvdesc.read`: untrusted DTBs, ACPI tables and guest output, read.
- :mod:`pvdesc.description`: YAML -> model, with file:line:column errors; VMM profiles.
- :mod:`pvdesc.layout`: the allocation, the one model of what the guest believes, the rules.
- :mod:`pvdesc.emit`: DT, ACPI, hypervisor config, VMM arguments; publishing.
- :mod:`pvdesc.audit`: ``pvdesc check`` and ``pvdesc diff``.
- :mod:`pvdesc.commands`: the ``pvdesc`` command, and ``validate``, ``prove`` and ``map``.
- :mod:`pvdesc.api`: the stable Python API for build scripts (imported only when asked for).
"""

__version__ = "0.1.0"
