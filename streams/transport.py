"""Faust's aiokafka transport with a configurable consumer fetch wait.

aiokafka keeps one fetch request in flight per broker; the broker holds it up to
``fetch_max_wait_ms`` when the requested partitions have no data, and a partition that
gets data meanwhile waits for that request to return. Faust 0.15 hard-codes 1500 ms
and has no setting for it, which would add up to 1.5 s to an event's way through the
worker. This transport sets the wait of the worker's consumer (10 ms by default).
"""

from __future__ import annotations

from typing import Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ShortFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(
        self, transport: faust_aiokafka.Transport
    ) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # AIOKafkaConsumer keeps the value until start() hands it to its Fetcher.
        consumer._fetch_max_wait_ms = cast(ShortFetchTransport, transport).fetch_max_wait_ms
        return consumer


class _ShortFetchConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ShortFetchTransport(faust_aiokafka.Transport):
    """Use as ``app.transport = ShortFetchTransport(app.conf.broker_consumer, app, ...)``."""

    Consumer = _ShortFetchConsumer

    def __init__(self, *args: Any, fetch_max_wait_ms: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_max_wait_ms = fetch_max_wait_ms
