"""The streams worker, a Faust app: the events path (``streams.events``) validates,
dedupes and enriches events and keeps users' online state in Redis; the items agent
embeds catalog items. Run it with ``python -m streams``."""
