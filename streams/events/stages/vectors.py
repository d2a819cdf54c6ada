"""Stage 4 of a batch: the new vector of each user it touched, one encoder call for all
of them (also the path of re-embedding between batches)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from contracts.online import encode_vector
from streams.events.ports import Clock, Model
from streams.history import UserState
from streams.metrics import StreamsMetrics
from streams.online import UserVector
from streams.waiting import WaitingUsers, missing_items


async def user_vectors(
    states: Mapping[str, UserState], partition_of: Mapping[str, int], *, model: Model,
    vectors: Mapping[str, np.ndarray], waiting: WaitingUsers, metrics: StreamsMetrics,
    clock: Clock,
) -> list[UserVector]:
    """The new vector of each user with a history item that has a vector in `vectors`,
    all users in one call of the model's user encoder, on the event loop (a tower in a
    thread beside a loop busy with batches waits for the GIL at every operator: ~300 ms
    a pass against ~14 ms) or awaited from the tower's own process (``tower_process``).
    Users are noted as waiting for the items without a vector before the call: one that
    gets its vector meanwhile finds them. `partition_of` maps each user to its partition
    of events."""
    if not states:
        return []
    for user_id, state in states.items():
        waiting.note((partition_of[user_id], user_id), missing_items(state.history, vectors))
    histories = [state.history for state in states.values()]
    encoder = model.user_encoder
    started = time.perf_counter()
    encoded = await encoder.encode_async(histories, vectors.get)
    metrics.encode_seconds.labels("user").observe(time.perf_counter() - started)
    metrics.user_vectors.inc(sum(vector is not None for vector in encoded))
    written_at = clock()
    return [
        UserVector(user_id, encode_vector(vector), model.version,
                   max(i.timestamp_ms for i in state.history), written_at)
        for (user_id, state), vector in zip(states.items(), encoded, strict=True)
        if vector is not None
    ]
