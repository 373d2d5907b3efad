"""The core types every layer shares: address ranges, sizes, and the VM model."""
