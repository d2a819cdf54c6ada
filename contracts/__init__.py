"""Contracts the deployables share without importing one another: executable, in one place."""
