"""Records in the protobuf JSON mapping, mixed with binary ones, against the real worker:
JSON items are embedded; of 1,000 random JSON documents and 1,000 random binary
payloads, each ends exactly once in events.enriched or events.dlq."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord
from random_records import ITEM_IDS, REASONS, json_payloads, payloads
from streams_harness import Running

from protos import events_pb2
from streams.settings import StreamsSettings

pytestmark = pytest.mark.integration

NOW_MS = time.time_ns() // 1_000_000
MAX_BYTES = StreamsSettings().max_event_bytes
EXAMPLES, PER_KIND = 20, 50  # 1,000 records of each kind
SENT: Counter[str] = Counter()


@pytest.fixture(scope="module")
def catalog(running: Running) -> list[str]:
    """The items random events may name, half of them sent as JSON, all embedded."""
    for n, item_id in enumerate(ITEM_IDS):
        item = events_pb2.Item(item_id=item_id, title=f"item {item_id}", categories=["test"])
        value = (json_format.MessageToJson(item).encode() if n % 2 else item.SerializeToString())
        running.send("items", item_id, value)

    def embedded(records: list[ConsumerRecord]) -> bool | None:
        return True if {r.key.decode() for r in records} >= set(ITEM_IDS) else None

    running.logs["item_vectors"].wait_for(embedded, running.worker, what="item vectors")
    return ITEM_IDS


def test_a_bad_json_item_is_dead_lettered(running: Running) -> None:
    _, offset = running.send("items", "i-bad", b'{"itemId": "i-bad", "price": "cheap"}')

    def letter(records: list[ConsumerRecord]) -> events_pb2.DeadLetter | None:
        for record in records:
            found = events_pb2.DeadLetter.FromString(record.value)
            if (found.origin_topic, found.origin_offset) == (running.worker.topics["items"],
                                                             offset):
                return found
        return None

    found = running.logs["dlq"].wait_for(letter, running.worker, what="the item's dead letter")
    assert found.reason == "undecodable" and "price" in found.detail


def shop_line(event_id: str, item_id: str, **names: str) -> bytes:
    """What a shop backend sends: lowerCamel names by default, enum by name, int64 quoted."""
    document = {"eventId": event_id, "userId": "u1", "itemId": item_id, "type": "PURCHASE",
                "timestampMs": str(time.time_ns() // 1_000_000), "value": 2}
    for name, replacement in names.items():
        document[replacement] = document.pop(name)
    return json.dumps(document).encode()


@settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(
    mixed=st.tuples(
        st.lists(json_payloads(NOW_MS, ITEM_IDS, MAX_BYTES), min_size=PER_KIND, max_size=PER_KIND),
        st.lists(payloads(NOW_MS, ITEM_IDS, MAX_BYTES), min_size=PER_KIND, max_size=PER_KIND),
    ).flatmap(lambda kinds: st.permutations([*kinds[0], *kinds[1]])),
)
def test_random_json_and_binary_records_each_get_one_outcome(
    running: Running, catalog: list[str], mixed: list[tuple[bytes | None, bytes]],
) -> None:
    SENT["records"] += len(mixed)
    stamp = time.time_ns()
    controls = [  # accepted whatever came before: fresh ids, either field names
        (b"u1", shop_line(f"camel-{stamp}", catalog[0])),
        (b"u1", shop_line(f"proto-{stamp}", catalog[1], eventId="event_id", userId="user_id",
                          itemId="item_id", timestampMs="timestamp_ms")),
    ]
    sent = running.send_all("events", [*mixed, *controls])

    def all_done(_: list[ConsumerRecord]) -> dict[tuple[int, int], list[str]] | None:
        running.logs["dlq"].poll()
        found = running.outcomes(set(sent))
        return found if len(found) == len(set(sent)) else None

    running.logs["enriched"].wait_for(all_done, running.worker, what="every outcome")
    time.sleep(1.0)  # ten commit intervals: a second outcome would be committed by now
    running.logs["enriched"].poll()
    running.logs["dlq"].poll()
    found = running.outcomes(set(sent))
    assert len(found) == len(sent) and all(len(kinds) == 1 for kinds in found.values()), found
    assert [found[where] for where in sent[-2:]] == [["accepted"], ["accepted"]]
    reasons = {kinds[0] for kinds in found.values()} - {"accepted"}
    assert reasons <= REASONS - {"internal_error"}
    running.worker.check_alive()


def test_the_sample_had_a_thousand_of_each() -> None:
    """Hypothesis drops an example it cannot fill: check that all of them ran."""
    if not SENT:
        pytest.skip("the property test did not run")
    assert SENT["records"] == EXAMPLES * PER_KIND * 2
