"""``pvdesc validate``: build, check and externally validate a fleet of descriptions."""
