"""Contracts shared by the deployables: what they agree on, executable, in one place."""
