"""User states of the partitions of ``events`` this worker owns, kept in memory and in a
compacted changelog topic (``{app_id}-users-changelog``, partitioned like ``events``).

A user's events all arrive in one partition of ``events`` (the key is the user id), so
each partition's users are a separate map. A changed state goes to the changelog in the
same Kafka transaction as the outputs and the offset of the records that changed it
(:mod:`streams.delivery`): a reader with ``read_committed`` sees exactly the states that
the committed offsets produced. When a partition is assigned, its map is rebuilt from
the changelog, read committed, before any of its records is handled; so after a crash
the records read again fold into the state they were not yet in, never twice.

States are held encoded (compact JSON, :mod:`streams.history`), a few hundred bytes to
a few KB per user; they are decoded when a batch touches the user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.history import UserState, decode_state, encode_state

log = logging.getLogger(__name__)

RESTORE_FETCH_BYTES = 8 << 20


class UserStore:
    """Partition -> user id -> encoded state; ``topic`` is the changelog."""

    def __init__(self, *, topic: str, bootstrap_servers: list[str]) -> None:
        self.topic = topic
        self._bootstrap_servers = bootstrap_servers
        self._states: dict[int, dict[str, bytes]] = {}

    def get(self, partition: int, user_id: str) -> UserState:
        return decode_state(self._states.get(partition, {}).get(user_id))

    def put(self, partition: int, user_id: str, state: UserState) -> bytes:
        """Keep the new state; returns its encoding, the changelog record's value."""
        value = encode_state(state)
        self._states.setdefault(partition, {})[user_id] = value
        return value

    def users(self) -> Iterator[tuple[int, str]]:
        """(partition, user id) of every user held, over a snapshot of the keys."""
        for partition, states in list(self._states.items()):
            for user_id in list(states):
                yield partition, user_id

    def __len__(self) -> int:
        return sum(len(states) for states in self._states.values())

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns."""
        for partition in partitions:
            self._states.pop(partition, None)

    async def restore(self, partitions: Iterable[int]) -> None:
        """Rebuild the maps of `partitions` from their committed changelog records."""
        wanted = sorted(set(partitions))
        if not wanted:
            return
        started = time.monotonic()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=RESTORE_FETCH_BYTES,
            fetch_max_wait_ms=50,
            client_id="streamrec-streams-restore",
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in wanted]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            # read_committed: the end is the last stable offset, after any open transaction.
            ends = await consumer.end_offsets(tps)
            states: dict[int, dict[str, bytes]] = {p: {} for p in wanted}
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=500)
                for tp, records in batches.items():
                    partition = states[tp.partition]
                    for record in records:
                        if record.key is None:
                            continue
                        if record.value is None:
                            partition.pop(record.key.decode(), None)
                        else:
                            partition[record.key.decode()] = record.value
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()
        self._states.update(states)
        log.info("restored %s user states of %s partitions %s in %.2f s",
                 sum(len(s) for s in states.values()), self.topic, wanted,
                 time.monotonic() - started)
