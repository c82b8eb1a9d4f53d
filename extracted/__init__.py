"""extracted: see README.md."""
