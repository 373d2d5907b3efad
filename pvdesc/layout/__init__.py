"""Where things go: the VMM profiles, the allocator, the one model of what the guest believes."""
