"""The C source of the VMM that ``prove --kvm`` cross-compiles; shipped as ``pvdesc.vmm``."""
