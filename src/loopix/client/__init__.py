"""The client runtime: coordinator, packet workers, shared-memory rings, the uvloop sender."""
