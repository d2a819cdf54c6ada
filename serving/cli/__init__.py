"""Command-line tools over serving's public contracts: ``client``, ``admin``, ``report``."""
