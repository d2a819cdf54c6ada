"""Reading a worker's compacted changelog topics back, read committed, when partitions
of ``events`` are assigned (:mod:`streams.events.userstore`, :mod:`streams.events.seenstore`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from contracts.catchup import read_to_end
from contracts.security import KafkaSecurity, kafka_kwargs

log = logging.getLogger(__name__)

RESTORE_FETCH_BYTES = 8 << 20
T = TypeVar("T")


async def read_committed(
    *, bootstrap_servers: list[str], topic: str, partitions: Iterable[int], client_id: str,
    security: KafkaSecurity | None = None,
) -> dict[int, dict[bytes, bytes]]:
    """Per partition, the newest committed value of every key (tombstones remove it)."""
    wanted = sorted(set(partitions))
    values: dict[int, dict[bytes, bytes]] = {p: {} for p in wanted}
    if not wanted:
        return values
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=RESTORE_FETCH_BYTES,
        fetch_max_wait_ms=50,
        client_id=client_id,
        **kafka_kwargs(security),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in wanted]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # read_committed: the end is the last stable offset, after any open transaction,
        # and one past the last transaction's commit marker (read_to_end compares positions).
        await read_to_end(consumer, tps, lambda records: fold_changelog(values, records))
    finally:
        await consumer.stop()
    return values


def fold_changelog(values: dict[int, dict[bytes, bytes]], records: Iterable[ConsumerRecord]
                   ) -> None:
    """Fold records of a compacted changelog into `values` (partition -> key -> newest
    value); a tombstone removes its key, a record without a key is ignored."""
    for record in records:
        if record.key is None:
            continue
        partition = values.setdefault(record.partition, {})
        if record.value is None:
            partition.pop(record.key, None)
        else:
            partition[record.key] = record.value


class ChangelogStore(Generic[T]):
    """Something per assigned partition of ``events`` (``T``), kept in memory and rebuilt
    from its changelog ``topic`` when the partition is assigned."""

    what = "records"  # what a restore reports the count of
    client_id = "streamrec-streams-restore"

    def __init__(self, *, topic: str, bootstrap_servers: list[str],
                 security: KafkaSecurity | None = None) -> None:
        self.topic = topic
        self._bootstrap_servers = bootstrap_servers
        self._security = security
        self._held: dict[int, T] = {}

    def _load(self, records: dict[bytes, bytes]) -> T:
        """The partition's value from its changelog (key -> newest committed value)."""
        raise NotImplementedError

    def _count(self, held: T) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return sum(self._count(held) for held in self._held.values())

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns."""
        for partition in partitions:
            self._held.pop(partition, None)

    async def restore(self, partitions: Iterable[int]) -> None:
        """Rebuild `partitions` from their committed changelog records."""
        wanted = sorted(set(partitions))
        if not wanted:
            return
        started = time.monotonic()
        values = await read_committed(bootstrap_servers=self._bootstrap_servers,
                                      topic=self.topic, partitions=wanted,
                                      client_id=self.client_id, security=self._security)
        for partition, records in values.items():
            self._held[partition] = self._load(records)
        log.info("restored %s %s of %s partitions %s in %.2f s",
                 sum(self._count(self._held[p]) for p in wanted), self.what, self.topic, wanted,
                 time.monotonic() - started)
