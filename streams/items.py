"""The items agent's handler: decode catalog items, embed them off the event loop and
publish their vectors on ``item-vectors``; a bad record goes to ``events.dlq``
(``origin_topic`` tells it from an event's dead letter), at least once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from faust.types import EventT, TopicT
from faust.types.tuples import Message

from protos import events_pb2
from streams.catalog import Catalog
from streams.errors import RejectedInput
from streams.live import LiveModel
from streams.metrics import StreamsMetrics
from streams.records import INTERNAL_ERROR, Record, dead_letter, now_ms
from contracts.itemtext import item_text
from streams.validation import parse_item

log = logging.getLogger(__name__)


def to_record(message: Message) -> Record:
    return Record(message.topic, message.partition, message.offset, message.key, message.value)


async def send_dead_letter(dlq: TopicT, record: Record, *, reason: str, detail: str) -> None:
    letter = dead_letter(record, reason=reason, detail=detail, now_ms=now_ms())
    await dlq.send(key=record.key, value=letter.SerializeToString())


class ItemsHandler:
    """Embeds batches of catalog items and publishes their vectors."""

    def __init__(
        self, *, catalog: Catalog, live: LiveModel, item_vectors: TopicT, dlq: TopicT,
        max_item_bytes: int, batch_size: int, metrics: StreamsMetrics,
    ) -> None:
        self._catalog = catalog
        self._live = live
        self._metrics = metrics
        self._batch_size = batch_size
        self._item_vectors = item_vectors
        self._dlq = dlq
        self._max_item_bytes = max_item_bytes
        self.embedded = 0
        self.kept = 0  # item records whose vector was kept: their text is unchanged

    async def handle(self, events: Sequence[EventT]) -> None:
        latest: dict[str, tuple[Record, events_pb2.Item]] = {}
        for event in events:
            record = to_record(event.message)
            if record.value is None:
                continue  # a tombstone: the catalog feed removes the item
            try:
                item = parse_item(record.value, max_bytes=self._max_item_bytes)
            except RejectedInput as error:
                log.warning("item record %s[%s]@%s rejected: %s", record.topic, record.partition,
                            record.offset, error)
                await send_dead_letter(self._dlq, record, reason=error.reason, detail=str(error))
                continue
            self._catalog.put_item(item)  # joinable now; the feed would add it a moment later
            if self._catalog.reuse_vector(item):
                latest.pop(item.item_id, None)  # its text, so its vector, is unchanged
                self.kept += 1
                continue
            latest[item.item_id] = (record, item)
        if not latest:
            return
        items = [item for _, item in latest.values()]
        try:
            await self._embed(items)
        except Exception as error:
            log.exception("embedding %s items failed; dead-lettering them", len(items))
            for record, _ in latest.values():
                await send_dead_letter(self._dlq, record, reason=INTERNAL_ERROR, detail=repr(error))

    async def embed_missing(self) -> int:
        """Embed and publish the catalog items without a vector of the version in use."""
        missing = self._catalog.items_without_vector()
        for start in range(0, len(missing), self._batch_size):
            await self._embed(missing[start:start + self._batch_size])
        return len(missing)

    async def _embed(self, items: list[events_pb2.Item]) -> None:
        model = self._live.current  # the version the vectors are stamped with
        # Blocks for milliseconds per item: keep the event loop free meanwhile.
        started = time.perf_counter()
        vectors = await asyncio.to_thread(model.item_encoder.encode, [item_text(i) for i in items])
        self._metrics.encode_seconds.labels("item").observe(time.perf_counter() - started)
        updated_at = now_ms()
        for item, vector in zip(items, vectors, strict=True):
            item_vector = events_pb2.ItemVector(
                item_id=item.item_id,
                model_version=model.version,
                vector=vector.tolist(),
                updated_at_ms=updated_at,
            )
            self._catalog.put_vector(item_vector, text=item_text(item))
            await self._item_vectors.send(
                key=item.item_id.encode(), value=item_vector.SerializeToString()
            )
        self.embedded += len(items)
        self._metrics.items_embedded.inc(len(items))
