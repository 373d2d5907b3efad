"""Writing the matched pair: devicetree, ACPI, hypervisor config, VMM arguments; publishing."""
