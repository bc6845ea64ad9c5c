"""The station's configuration: one validated file, read before anything starts (docs/architecture.md)."""
