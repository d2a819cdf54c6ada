"""Executable contracts shared by the deployables (topics, records and their rules)."""
