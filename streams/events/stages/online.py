"""Stage 5 of a batch: its online state written to Redis (:mod:`streams.online`), before
anything is produced: once enriched, serving already sees the event. A record read again
after a crash finds its effects applied and adds nothing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from streams.events.ports import Clock, OnlineStore
from streams.events.stages.admit import Accepted, Rejected
from streams.history import UserState
from streams.metrics import StreamsMetrics
from streams.online import Touch, UserVector
from streams.records import INTERNAL_ERROR, Record

log = logging.getLogger(__name__)

Outcomes = list[tuple[Record, Accepted | Rejected]]


def touches(outcomes: Sequence[tuple[Record, Accepted | Rejected]]) -> list[Touch]:
    """What the accepted events do to the online state, located by their records."""
    return [
        Touch(o.event.user_id, o.event.item_id, o.event.timestamp_ms, o.weight, o.event.type,
              r.partition, r.offset)
        for r, o in outcomes if isinstance(o, Accepted)
    ]


async def write_online(
    outcomes: Outcomes, produced: Sequence[int], *, online: OnlineStore,
    user_vectors: Callable[[dict[str, UserState]], Awaitable[list[UserVector]]],
    metrics: StreamsMetrics, clock: Clock,
) -> Outcomes:
    """Write the accepted events' touches and their users' new vectors in one write; the
    outcomes, with every accepted one turned into an ``internal_error`` dead letter if
    that failed (Redis errors themselves are retried by the store until it succeeds).
    `produced` holds the records' timestamps, in the order of `outcomes`, for the
    freshness metric."""
    accepted = {o.event.user_id: o.state for _, o in outcomes if isinstance(o, Accepted)}
    try:
        await online.write(touches(outcomes), await user_vectors(accepted))
    except Exception as error:
        log.exception("writing the online state of %s events failed",
                      sum(isinstance(o, Accepted) for _, o in outcomes))
        failed = Rejected(INTERNAL_ERROR, repr(error))
        return [(r, failed if isinstance(o, Accepted) else o) for r, o in outcomes]
    done = clock()
    for (_, outcome), timestamp in zip(outcomes, produced, strict=True):
        if timestamp and isinstance(outcome, Accepted):
            metrics.freshness.observe(max(done - timestamp, 0) / 1000.0)
    return outcomes
