"""Stage 3 of a batch: the user states it changed, kept in the user store and sent to
the users changelog in the partition's transaction (:mod:`streams.events.userstore`)."""

from __future__ import annotations

from collections.abc import Mapping

from streams.events.ports import UserStates
from streams.history import UserState
from streams.records import Output


def keep_states(changed: Mapping[str, tuple[int, UserState]],
                users: UserStates) -> dict[int, list[Output]]:
    """Store each changed user's newest state (:attr:`Batch.changed`: user -> partition
    of events, state); the changelog records, per partition of events."""
    records: dict[int, list[Output]] = {}
    for user_id, (partition, state) in changed.items():
        records.setdefault(partition, []).append(
            (users.topic, partition, user_id.encode(), users.put(partition, user_id, state))
        )
    return records
