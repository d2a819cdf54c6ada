"""Brings data sets into Kafka: the catalog to `items`, interactions to `events`."""
