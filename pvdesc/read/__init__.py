"""Reading what others wrote: DTBs and ACPI tables, untrusted."""
