"""Contracts the deployables share without importing one another."""
