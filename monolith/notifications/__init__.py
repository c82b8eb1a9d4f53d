"""The notifications module: the messages customers are sent. See README.md."""
