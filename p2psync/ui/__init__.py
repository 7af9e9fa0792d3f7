"""The terminal: the live progress display and the status tables (rich)."""
