"""Random input against the admission of events (streams.processing.admit_batch).

Hypothesis throws batches of random records at it: random bytes, random ``Event``
messages with random fields (unknown types and items, far past and future times, NaN and
huge values, wrong keys), oversized payloads and repeated event ids. Every record gets
exactly one outcome, a dead letter's reason is one that docs/contracts.md documents, and
what is accepted is a valid, first-seen event with a finite positive weight.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos import events_pb2
from streams.history import UserState, weights_by_type
from streams.processing import INTERNAL_ERROR, Accepted, Policy, Record, Rejected, admit_batch
from streams.settings import DEFAULT_WEIGHTS
from streams.validation import KNOWN_EVENT_TYPES, MIN_TIMESTAMP_MS, EventLimits

NOW_MS = 1_790_000_000_000
POLICY = Policy(
    limits=EventLimits(max_bytes=2048, max_future_skew_ms=60_000),
    weights=weights_by_type(DEFAULT_WEIGHTS),
    history_length=20,
    dedupe_window=50,
)
ITEMS = {f"i{k}": events_pb2.Item(item_id=f"i{k}", title=f"Film {k}") for k in range(5)}
USERS = ["u1", "u2", "u3"]
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def documented_reasons() -> set[str]:
    """The reasons in the dead-letter table of docs/contracts.md."""
    section = CONTRACTS.read_text().split("### Dead-letter reasons", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` +\|", section, flags=re.MULTILINE))


REASONS = documented_reasons()

int64 = st.integers(-(2**63), 2**63 - 1)
events = st.builds(
    events_pb2.Event,
    event_id=st.one_of(st.sampled_from(["", "e1", "e2", "e3"]), st.text(max_size=30)),
    user_id=st.one_of(st.sampled_from(["", *USERS]), st.text(max_size=20)),
    item_id=st.one_of(st.sampled_from(["", *ITEMS, "unknown"]), st.text(max_size=20)),
    type=st.one_of(st.sampled_from(sorted(KNOWN_EVENT_TYPES)), st.integers(-(2**31), 2**31 - 1)),
    timestamp_ms=st.one_of(
        st.integers(NOW_MS - 10**10, NOW_MS + 120_000),  # around now, some too far ahead
        st.sampled_from([0, MIN_TIMESTAMP_MS - 1, MIN_TIMESTAMP_MS]), int64,
    ),
    value=st.floats(allow_nan=True, allow_infinity=True),
    session_id=st.one_of(st.none(), st.text(max_size=10)),
    context=st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
    properties=st.dictionaries(st.text(max_size=5), st.text(max_size=3000), max_size=2),
)


@st.composite
def records(draw: st.DrawFn) -> list[Record]:
    """A batch as one worker takes it: increasing offsets per partition, some records
    repeated byte for byte (the same event sent twice)."""
    payloads = draw(st.lists(
        st.one_of(
            events.map(lambda e: (e.user_id.encode(), e.SerializeToString())),
            st.tuples(st.one_of(st.none(), st.sampled_from([b"u1", b"x"]), st.binary(max_size=8)),
                      events.map(lambda e: e.SerializeToString())),
            st.tuples(st.sampled_from([b"u1", None]), st.binary(max_size=300)),
            st.tuples(st.just(b"u1"), st.integers(2049, 70_000).map(lambda n: b"\x0a" * n)),
        ),
        min_size=1, max_size=POLICY.dedupe_window - 10,
    ))
    repeats = draw(st.lists(st.integers(0, len(payloads) - 1), max_size=10))
    payloads += [payloads[k] for k in repeats]
    batch, offsets = [], {0: 0, 1: 0}
    for key, value in payloads:
        partition = draw(st.sampled_from([0, 1]))
        batch.append(Record("events", partition, offsets[partition], key, value))
        offsets[partition] += 1
    return batch


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(records())
def test_every_record_gets_one_documented_outcome(batch: list[Record]) -> None:
    result = admit_batch(batch, items=ITEMS.get, state_of=lambda _: UserState(), now_ms=NOW_MS,
                         policy=POLICY)
    assert [record for record, _ in result.outcomes] == batch
    first_accepted: dict[tuple[str, str], int] = {}
    for record, outcome in result.outcomes:
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
        assert record.key is None or record.key == event.user_id.encode()
        assert math.isfinite(outcome.weight) and outcome.weight > 0
        assert not outcome.replay  # the state knew nothing before this batch
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
