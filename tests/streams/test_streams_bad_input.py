"""Random records against the real worker: each gets one committed outcome, the worker runs on.

A smaller sample than tests/streams/test_streams_admission.py (which checks the pure
admission with thousands of records), sent through Kafka to ``python -m streams``.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord
from random_records import ITEM_IDS, REASONS, payloads
from streams_harness import Running

from protos import events_pb2
from streams.settings import StreamsSettings

pytestmark = pytest.mark.integration

NOW_MS = time.time_ns() // 1_000_000
MAX_BYTES = StreamsSettings().max_event_bytes


@pytest.fixture(scope="module")
def catalog(running: Running) -> list[str]:
    """The items random events may name, known to the worker."""
    for item_id in ITEM_IDS:
        running.send("items", item_id, events_pb2.Item(item_id=item_id, title=item_id)
                     .SerializeToString())

    def embedded(records: list[ConsumerRecord]) -> bool | None:
        return True if {r.key.decode() for r in records} >= set(ITEM_IDS) else None

    running.logs["item_vectors"].wait_for(embedded, running.worker, what="item vectors")
    return ITEM_IDS


@settings(max_examples=4, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(payloads(NOW_MS, ITEM_IDS, MAX_BYTES), min_size=40, max_size=60))
def test_random_records_each_get_one_outcome(
    running: Running, catalog: list[str], batch: list[tuple[bytes | None, bytes]],
) -> None:
    valid = events_pb2.Event(event_id=f"valid-{time.time_ns()}", user_id="u1", item_id=catalog[0],
                             type=events_pb2.CLICK, timestamp_ms=time.time_ns() // 1_000_000)
    again = [*batch[:5], (b"u1", valid.SerializeToString())]  # accepted ones: duplicates now
    records = [*batch, (b"u1", valid.SerializeToString()), *again]
    sent = [running.send("events", key, value) for key, value in records]
    first_valid = len(batch)

    def all_done(_: list[ConsumerRecord]) -> dict[tuple[int, int], list[str]] | None:
        running.logs["dlq"].poll()
        found = running.outcomes(set(sent))
        return found if len(found) == len(set(sent)) else None

    found = running.logs["enriched"].wait_for(all_done, running.worker, what="every outcome")
    time.sleep(1.0)  # ten commit intervals: a second outcome would be committed by now
    running.logs["enriched"].poll()
    running.logs["dlq"].poll()
    found = running.outcomes(set(sent))
    assert all(len(kinds) == 1 for kinds in found.values()), found
    assert found[sent[first_valid]] == ["accepted"] and found[sent[-1]] == ["duplicate"]
    reasons = {kinds[0] for kinds in found.values()} - {"accepted"}
    assert reasons <= REASONS - {"internal_error"}
    running.worker.check_alive()
