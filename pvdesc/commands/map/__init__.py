"""``pvdesc map``: the guest physical address map, as a model and drawn."""
