"""Where things go: the allocator, and the one model of what the guest believes, with its rules."""
