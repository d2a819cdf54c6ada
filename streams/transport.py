"""Faust's aiokafka transport with a configurable consumer fetch wait, and offsets that
the worker commits itself.

aiokafka keeps one fetch request in flight per broker; the broker holds it up to
``fetch_max_wait_ms`` when the requested partitions have no data, and a partition that
gets data meanwhile waits for that request to return. Faust 0.15 hard-codes 1500 ms
and has no setting for it, which would add up to 1.5 s to an event's way through the
worker. This transport sets the wait of the worker's consumer (10 ms by default).

The offsets of ``events`` are committed inside the worker's Kafka transactions, together
with the records made from them (``streams.delivery``). Faust's consumer must not commit
them as well: its commit of an acknowledged offset could land before the transaction that
holds the record's output, or after a newer transactional commit and move the group back.
It takes the offsets as committed without sending them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP


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

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        elsewhere = cast(ShortFetchTransport, self.transport).committed_elsewhere
        own = {tp: offset for tp, offset in offsets.items() if tp.topic not in elsewhere}
        # Faust's bookkeeping (what is left to commit, stall warnings) sees them done.
        self._committed_offset.update(
            {tp: offset for tp, offset in offsets.items() if tp.topic in elsewhere}
        )
        if not own:
            return False
        return await super()._commit_offsets(own, start_new_transaction)


class ShortFetchTransport(faust_aiokafka.Transport):
    """Use as ``app.transport = ShortFetchTransport(app.conf.broker_consumer, app, ...)``;
    ``committed_elsewhere`` names the topics whose offsets Faust must not commit."""

    Consumer = _ShortFetchConsumer

    def __init__(
        self, *args: Any, fetch_max_wait_ms: int, committed_elsewhere: frozenset[str] = frozenset(),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.committed_elsewhere = committed_elsewhere
