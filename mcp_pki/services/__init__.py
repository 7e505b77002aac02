"""Use cases: one function per command, each one transaction with its audit record."""
