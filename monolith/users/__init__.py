"""The users module: who the customers are. See README.md."""
