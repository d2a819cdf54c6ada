"""User states of the partitions of ``events`` this worker owns, kept in memory and in a
compacted changelog topic (``{app_id}-users-changelog``, partitioned like ``events``).

A user's events all arrive in one partition of ``events`` (the key is the user id), so
each partition's users are a separate map. A changed state goes to the changelog in the
same Kafka transaction as the outputs and the offset of the records that changed it
(:mod:`streams.events.transactions`): a reader with ``read_committed`` sees exactly the states that
the committed offsets produced. When a partition is assigned, its map is rebuilt from
the changelog, read committed, before any of its records is handled; so after a crash
the records read again fold into the state they were not yet in, never twice.

States are held encoded (compact JSON, :mod:`streams.history`), a few hundred bytes to
a few KB per user; they are decoded when a batch touches the user.
"""

from __future__ import annotations

from collections.abc import Iterator

from streams.events.changelog import ChangelogStore
from streams.history import UserState, decode_state, encode_state


class UserStore(ChangelogStore[dict[str, bytes]]):
    """Partition -> user id -> encoded state; ``topic`` is the changelog."""

    what = "user states"

    def get(self, partition: int, user_id: str) -> UserState:
        return decode_state(self._held.get(partition, {}).get(user_id))

    def put(self, partition: int, user_id: str, state: UserState) -> bytes:
        """Keep the new state; returns its encoding, the changelog record's value."""
        value = encode_state(state)
        self._held.setdefault(partition, {})[user_id] = value
        return value

    def delete(self, partition: int, user_id: str) -> bool:
        """Forget a deleted user; whether a state was held (the changelog's tombstone is
        the caller's, in the partition's transaction)."""
        return self._held.get(partition, {}).pop(user_id, None) is not None

    def holds(self, partition: int, user_id: str) -> bool:
        return user_id in self._held.get(partition, {})

    def users(self) -> Iterator[tuple[int, str]]:
        """(partition, user id) of every user held, over a snapshot of the keys."""
        for partition, states in list(self._held.items()):
            for user_id in list(states):
                yield partition, user_id

    def _load(self, records: dict[bytes, bytes]) -> dict[str, bytes]:
        return {key.decode(): value for key, value in records.items()}

    def _count(self, held: dict[str, bytes]) -> int:
        return len(held)
