"""Random input against the admission of events (streams.events.stages.admit.admit_batch).

Hypothesis throws batches of random records at it: random bytes, random ``Event``
messages with random fields (unknown types and items, far past and future times, NaN and
huge values, wrong keys), oversized payloads and repeated event ids, through a dedupe
window of a week. Every record gets exactly one outcome, a dead letter's reason is one
that docs/contracts.md documents, what is accepted is a valid, first-seen event with a
finite positive weight, and ``too_old`` is exactly an event more than the window older
than the newest accepted before it.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from random_records import ITEM_IDS, NOW_MS, REASONS, records

from protos import events_pb2
from streams.events.stages.admit import Accepted, Policy, Rejected, admit_batch
from streams.history import UserState, weights_by_type
from streams.records import INTERNAL_ERROR, Record
from streams.seen import SeenIds
from streams.settings import DEFAULT_WEIGHTS
from streams.validation import KNOWN_EVENT_TYPES, MIN_TIMESTAMP_MS, EventLimits

POLICY = Policy(
    limits=EventLimits(max_bytes=2048, max_future_skew_ms=60_000),
    weights=weights_by_type(DEFAULT_WEIGHTS),
    history_length=20,
    dedupe_window=50,
)
WINDOW_MS = 7 * 24 * 3600 * 1000
ITEMS = {item_id: events_pb2.Item(item_id=item_id, title=item_id) for item_id in ITEM_IDS}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(records(max_size=POLICY.dedupe_window - 10, max_bytes=POLICY.limits.max_bytes))
def test_every_record_gets_one_documented_outcome(batch: list[Record]) -> None:
    windows: dict[int, SeenIds] = {}
    result = admit_batch(batch, items=ITEMS.get, state_of=lambda _: UserState(), now_ms=NOW_MS,
                         policy=POLICY,
                         seen=lambda p: windows.setdefault(p, SeenIds(window_ms=WINDOW_MS)))
    assert [record for record, _ in result.outcomes] == batch
    first_accepted: dict[tuple[str, str], int] = {}
    newest: dict[int, int] = {}  # per partition, the newest event time accepted so far
    for record, outcome in result.outcomes:
        if isinstance(outcome, Rejected) and outcome.reason == "too_old":
            old = events_pb2.Event.FromString(record.value or b"")
            assert old.timestamp_ms < newest[record.partition] - WINDOW_MS
        if isinstance(outcome, Rejected):
            assert outcome.reason in REASONS, outcome
            assert outcome.reason != INTERNAL_ERROR, outcome.detail
            continue
        assert isinstance(outcome, Accepted)
        event = outcome.event
        assert record.value is not None and len(record.value) <= POLICY.limits.max_bytes
        assert event.event_id and event.user_id and event.item_id in ITEMS
        assert event.type in KNOWN_EVENT_TYPES
        assert MIN_TIMESTAMP_MS <= event.timestamp_ms <= NOW_MS + POLICY.limits.max_future_skew_ms
        assert record.key == event.user_id.encode()
        assert math.isfinite(outcome.weight) and outcome.weight > 0
        assert not outcome.replay  # the state knew nothing before this batch
        watermark = newest.get(record.partition, event.timestamp_ms)
        assert event.timestamp_ms >= watermark - WINDOW_MS
        newest[record.partition] = max(watermark, event.timestamp_ms)
        key = (event.user_id, event.event_id)
        assert key not in first_accepted, "an event id accepted twice"
        first_accepted[key] = record.offset
    # A repeat of an accepted event is a duplicate; the state keeps each accepted once.
    for record, outcome in result.outcomes:
        if isinstance(outcome, Rejected) and outcome.reason == "duplicate":
            event = events_pb2.Event.FromString(record.value or b"")
            assert (event.user_id, event.event_id) in first_accepted
    for user_id, (_, state) in result.changed.items():
        mine = [k for k in first_accepted if k[0] == user_id]
        assert len(state.history) == min(len(mine), POLICY.history_length)
        assert sorted(e for e, _ in state.accepted) == sorted(e for _, e in mine)  # < window
        times = [i.timestamp_ms for i in state.history]
        assert times == sorted(times)
