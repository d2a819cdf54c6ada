"""Faust's aiokafka transport with a configurable consumer fetch wait, reading again
records it skipped.

aiokafka keeps one fetch request in flight per broker; the broker holds it up to
``fetch_max_wait_ms`` when the requested partitions have no data, and a partition that
gets data meanwhile waits for that request to return. Faust 0.15 hard-codes 1500 ms
and has no setting for it, which would add up to 1.5 s to an event's way through the
worker. This transport sets the wait of the worker's consumer (10 ms by default).

Faust can take records from aiokafka and not hand them to the agent: its ``getmany``
stops part-way through a fetched batch when the flow stops or the generation changes,
and the partition's position has moved past them; Faust counts on its next seek to the
committed offsets to read them again, and until a rebalance brings one they are skipped
(an item left unembedded after a restart). The consumer here keeps, for the topics it guards, the next
offset each partition should hand over; a record beyond it means records were skipped,
and the partition is sought back to read them again. A gap that is there again after
one such seek is a real one (compaction, transaction markers) and is accepted. Skipped
records with none after them show no gap: a partition whose position stays ahead of
what was handed over, with nothing handed over between two checks, is sought back too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import Message
from mode import Service

log = logging.getLogger(__name__)

TAIL_CHECK_S = 5.0


class _ShortFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(
        self, transport: faust_aiokafka.Transport
    ) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # AIOKafkaConsumer keeps the value until start() hands it to its Fetcher.
        consumer._fetch_max_wait_ms = cast(ShortFetchTransport, transport).fetch_max_wait_ms
        return consumer


class _ShortFetchConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_offset: dict[TP, int] = {}  # next offset to hand over, per guarded partition
        self._sought_back: dict[TP, int] = {}  # where a gap made us seek, per partition

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        for tp, offset in committed.items():
            if offset is not None and offset >= 0:
                self._next_offset[tp] = offset
            else:
                self._next_offset.pop(tp, None)  # no committed offset: the reset policy decides
        return committed

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        guarded = cast(ShortFetchTransport, self.transport).gap_checked
        sought: set[TP] = set()
        async for tp, message in super().getmany(timeout):
            if tp.topic not in guarded:
                yield tp, message
                continue
            if tp in sought:
                continue  # read again after the seek
            expected = self._next_offset.get(tp)
            if expected is not None and message.offset > expected:
                if await self._seek_back(tp, expected, message.offset):
                    sought.add(tp)
                    continue
            self._next_offset[tp] = max(expected or 0, message.offset + 1)
            yield tp, message

    async def _seek_back(self, tp: TP, expected: int, found: int) -> bool:
        """Seek `tp` back to `expected` unless that was done already (a real gap)."""
        if self._sought_back.get(tp) == expected:
            return False
        log.warning("%s[%s]: offsets %s..%s were taken but not handed over; reading them again",
                    tp.topic, tp.partition, expected, found - 1)
        self._sought_back[tp] = expected
        await self.seek(tp, expected)
        return True

    @Service.task
    async def _reread_skipped_tails(self) -> None:
        previous: dict[TP, tuple[int, int]] = {}
        while not self.should_stop:
            await self.sleep(TAIL_CHECK_S)
            if not self.flow_active:
                previous.clear()
                continue
            current: dict[TP, tuple[int, int]] = {}
            assignment = self.assignment()
            for tp, expected in list(self._next_offset.items()):
                if tp not in assignment:
                    continue
                try:
                    position = await self.position(tp)
                except Exception:  # not fetching this partition right now: check next time
                    continue
                if position is not None and position > expected:
                    current[tp] = (expected, position)
                    if previous.get(tp) == (expected, position):
                        await self._seek_back(tp, expected, position)
            previous = current


class ShortFetchTransport(faust_aiokafka.Transport):
    """Use as ``app.transport = ShortFetchTransport(app.conf.broker_consumer, app, ...)``;
    ``gap_checked`` names the topics whose skipped records are read again."""

    Consumer = _ShortFetchConsumer

    def __init__(
        self, *args: Any, fetch_max_wait_ms: int, gap_checked: frozenset[str] = frozenset(), **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.gap_checked = gap_checked
