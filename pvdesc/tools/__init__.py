"""Running external programs: processes, signals, bounded input, ACPICA, validators."""
