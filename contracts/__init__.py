"""Executable contracts every deployable shares (docs/contracts.md)."""
