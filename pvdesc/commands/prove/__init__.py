"""``pvdesc prove``: boot real guests (QEMU TCG, Linux under real KVM), read what they believe."""
