"""strangler_proxy: see README.md."""
