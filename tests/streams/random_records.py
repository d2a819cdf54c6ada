"""Random records of the events topic, binary and JSON (hypothesis strategies), and the
documented reasons."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

from google.protobuf import json_format
from hypothesis import strategies as st

from protos import events_pb2
from streams.records import Record
from streams.validation import KNOWN_EVENT_TYPES, MIN_TIMESTAMP_MS

NOW_MS = 1_790_000_000_000
ITEM_IDS = [f"i{k}" for k in range(5)]
USERS = ["u1", "u2", "u3"]
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def documented_reasons() -> set[str]:
    """The reasons in the dead-letter table of docs/contracts.md."""
    section = CONTRACTS.read_text().split("### Dead-letter reasons", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` +\|", section, flags=re.MULTILINE))


REASONS = documented_reasons()


def events(now_ms: int, item_ids: list[str]) -> st.SearchStrategy[events_pb2.Event]:
    """Events with random fields: empty ids, unknown types and items, times from far past to
    far future, NaN and infinite values, large maps."""
    return st.builds(
        events_pb2.Event,
        event_id=st.one_of(st.sampled_from(["", "e1", "e2", "e3"]), st.text(max_size=30)),
        user_id=st.one_of(st.sampled_from(["", *USERS]), st.text(max_size=20)),
        item_id=st.one_of(st.sampled_from(["", *item_ids, "unknown"]), st.text(max_size=20)),
        type=st.one_of(st.sampled_from(sorted(KNOWN_EVENT_TYPES)),
                       st.integers(-(2**31), 2**31 - 1)),
        timestamp_ms=st.one_of(
            st.integers(now_ms - 10**10, now_ms + 600_000),  # around now, some too far ahead
            st.sampled_from([0, MIN_TIMESTAMP_MS - 1, MIN_TIMESTAMP_MS]),
            st.integers(-(2**63), 2**63 - 1),
        ),
        value=st.floats(allow_nan=True, allow_infinity=True),
        session_id=st.one_of(st.none(), st.text(max_size=10)),
        context=st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
        properties=st.dictionaries(st.text(max_size=5), st.text(max_size=3000), max_size=2),
    )


def payloads(
    now_ms: int, item_ids: list[str], max_bytes: int
) -> st.SearchStrategy[tuple[bytes | None, bytes]]:
    """(key, value) of one record: a random Event keyed by its user or by anything, random
    bytes, or a payload over `max_bytes`."""
    any_event = events(now_ms, item_ids)
    return st.one_of(
        any_event.map(lambda e: (e.user_id.encode(), e.SerializeToString())),
        st.tuples(st.one_of(st.none(), st.sampled_from([b"u1", b"x"]), st.binary(max_size=8)),
                  any_event.map(lambda e: e.SerializeToString())),
        st.tuples(st.sampled_from([b"u1", None]), st.binary(max_size=300)),
        st.tuples(st.just(b"u1"),
                  st.integers(max_bytes + 1, max_bytes * 2).map(lambda n: b"\x0a" * n)),
    )


@st.composite
def records(draw: st.DrawFn, max_size: int, max_bytes: int) -> list[Record]:
    """A batch as one worker takes it: increasing offsets per partition, some records
    repeated byte for byte (the same event sent twice)."""
    pairs = draw(st.lists(payloads(NOW_MS, ITEM_IDS, max_bytes), min_size=1, max_size=max_size))
    repeats = draw(st.lists(st.integers(0, len(pairs) - 1), max_size=10))
    pairs += [pairs[k] for k in repeats]
    batch, offsets = [], {0: 0, 1: 0}
    for key, value in pairs:
        # As Kafka places them: by key, so one user's records share a partition.
        partition = zlib.crc32(key) % 2 if key is not None else draw(st.sampled_from([0, 1]))
        batch.append(Record("events", partition, offsets[partition], key, value))
        offsets[partition] += 1
    return batch


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)
EVENT_FIELDS = [f.json_name for f in events_pb2.Event.DESCRIPTOR.fields] + [
    f.name for f in events_pb2.Event.DESCRIPTOR.fields]


def event_json(event: events_pb2.Event, proto_names: bool) -> dict[str, object]:
    """The JSON mapping of an event as a dict, with .proto or lowerCamel field names."""
    return json_format.MessageToDict(event, preserving_proto_field_name=proto_names)


@st.composite
def broken_documents(draw: st.DrawFn, any_event: st.SearchStrategy[events_pb2.Event]) -> bytes:
    """A JSON object that is not a valid Event mapping: a field of the wrong type, an
    unknown field or enum name, or a valid one cut short."""
    document = event_json(draw(any_event), draw(st.booleans()))
    kind = draw(st.sampled_from(["wrong_type", "unknown_field", "unknown_enum", "truncated"]))
    if kind == "wrong_type":
        document[draw(st.sampled_from(EVENT_FIELDS))] = draw(JSON_VALUES)
    elif kind == "unknown_field":
        document[draw(st.text(min_size=1, max_size=10).filter(lambda n: n not in EVENT_FIELDS))] = 1
    elif kind == "unknown_enum":
        document["type"] = draw(st.sampled_from(["TELEPORT", "click", "", "VIEWS"]))
    text = json.dumps(document).encode()
    if kind == "truncated":
        text = text[: draw(st.integers(1, len(text) - 1))]
    return text


def valid_events(now_ms: int, item_ids: list[str]) -> st.SearchStrategy[events_pb2.Event]:
    """Events the worker accepts unless their id was seen: known user, item and type."""
    return st.builds(
        events_pb2.Event,
        event_id=st.text(min_size=1, max_size=30),
        user_id=st.sampled_from(USERS),
        item_id=st.sampled_from(item_ids),
        type=st.sampled_from(sorted(KNOWN_EVENT_TYPES)),
        timestamp_ms=st.integers(now_ms - 10**9, now_ms),
        value=st.floats(-100, 100),
        context=st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
    )


def json_payloads(
    now_ms: int, item_ids: list[str], max_bytes: int
) -> st.SearchStrategy[tuple[bytes | None, bytes]]:
    """(key, value) of one JSON record: the mapping of a random or a valid Event (either
    field names, keyed by its user), a broken document, bytes after a "{", invalid
    UTF-8, a JSON value that is not an object, or a document over `max_bytes`."""
    any_event = events(now_ms, item_ids)
    valid = valid_events(now_ms, item_ids)

    def keyed(event: events_pb2.Event, proto_names: bool) -> tuple[bytes | None, bytes]:
        return event.user_id.encode(), json.dumps(event_json(event, proto_names)).encode()

    keys = st.one_of(st.none(), st.sampled_from([b"u1", b"x"]), st.binary(max_size=8))
    return st.one_of(
        st.builds(keyed, any_event, st.booleans()),
        st.builds(keyed, valid, st.booleans()),
        st.builds(keyed, valid, st.booleans()),  # twice as likely: most lines are events
        st.tuples(keys, broken_documents(any_event)),
        st.tuples(st.sampled_from([b"u1", None]), st.binary(max_size=300).map(b"{".__add__)),
        st.tuples(st.just(b"u1"), st.binary(min_size=1, max_size=20).filter(_not_utf8).map(
            lambda raw: b'{"eventId": "' + raw + b'", "userId": "u1"}')),
        st.tuples(st.just(b"u1"), JSON_VALUES.filter(lambda v: not isinstance(v, dict))
                  .map(lambda v: json.dumps(v).encode())),
        st.tuples(st.just(b"u1"), st.integers(max_bytes + 1, max_bytes * 2)
                  .map(lambda n: b'{"eventId": "' + b"x" * n + b'"}')),
    )


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
