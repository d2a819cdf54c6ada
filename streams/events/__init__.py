"""The events path: ``events`` read in batches by the worker's own consumer group, each
partition's outputs, user states and offsets committed in one Kafka transaction
(``partitions``, ``transactions``), each batch run through its stages (``handler``,
``stages``)."""
