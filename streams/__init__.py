"""The streams worker: Faust agents that validate, dedupe and enrich events, embed catalog
items and keep users' online state in Redis. Run it with ``python -m streams``."""
