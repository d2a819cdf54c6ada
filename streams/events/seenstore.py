"""The dedupe windows (:mod:`streams.seen`) of the partitions of ``events`` this worker
owns, kept in memory and in a compacted changelog topic (``{app_id}-dedupe-changelog``,
partitioned like ``events``).

A batch's new ids go to the changelog in the same Kafka transaction as the outputs and
the offsets of the records that brought them (:mod:`streams.events.transactions`), as the user
states do: when a partition is assigned, its window is rebuilt from the changelog, read
committed, before any of its records is handled, so the ids remembered are exactly those
of the records below the committed offset.
"""

from __future__ import annotations

import numpy.typing as npt

from contracts.security import KafkaSecurity
from streams.events.changelog import ChangelogStore
from streams.seen import Change, Hashes, SeenIds


class SeenStore(ChangelogStore[SeenIds]):
    """Partition -> its dedupe window; ``topic`` is the changelog."""

    what = "remembered event ids"
    client_id = "streamrec-streams-restore-seen"

    def __init__(self, *, topic: str, bootstrap_servers: list[str], window_ms: int,
                 security: KafkaSecurity | None = None) -> None:
        super().__init__(topic=topic, bootstrap_servers=bootstrap_servers, security=security)
        self.window_ms = window_ms

    def of(self, partition: int) -> SeenIds:
        window = self._held.get(partition)
        if window is None:
            window = self._held[partition] = SeenIds(window_ms=self.window_ms)
        return window

    def add(self, partition: int, hashes: Hashes, times_ms: npt.ArrayLike) -> list[Change]:
        """Remember ids accepted in `partition`; returns its changelog records."""
        return self.of(partition).add(hashes, times_ms)

    def _load(self, records: dict[bytes, bytes]) -> SeenIds:
        window = SeenIds(window_ms=self.window_ms)
        window.load(records)
        return window

    def _count(self, held: SeenIds) -> int:
        return len(held)
