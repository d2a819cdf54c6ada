"""streams.validation: records in the protobuf JSON mapping, told apart from binary ones."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from random_records import ITEM_IDS, NOW_MS, events

from protos import events_pb2
from streams.errors import MissingField, Oversized, Undecodable, UnknownEventType
from contracts.records import is_json
from streams.validation import EventLimits, decode_message, parse_event, parse_item

LIMITS = EventLimits(max_bytes=4096, max_future_skew_ms=60_000)
EVENT = events_pb2.Event(event_id="e1", user_id="u1", item_id="i1", type=events_pb2.PURCHASE,
                         timestamp_ms=NOW_MS - 1000, value=2.0, context={"device": "ios"})


def parse_json(document: object, key: bytes = b"u1") -> events_pb2.Event:
    return parse_event(json.dumps(document).encode(), key, now_ms=NOW_MS, limits=LIMITS)


def test_lower_camel_and_proto_names_decode_to_the_binary_event() -> None:
    camel = json_format.MessageToJson(EVENT).encode()
    snake = json_format.MessageToJson(EVENT, preserving_proto_field_name=True).encode()
    assert b'"eventId"' in camel and b'"event_id"' in snake
    for payload in (camel, snake):
        assert parse_event(payload, b"u1", now_ms=NOW_MS, limits=LIMITS) == EVENT


def test_a_shop_line_with_enum_names_numbers_and_quoted_int64() -> None:
    parsed = parse_json({"event_id": "e1", "userId": "u1", "item_id": "i1", "type": "CLICK",
                         "timestampMs": str(NOW_MS - 5), "value": 1})
    assert (parsed.type, parsed.timestamp_ms, parsed.value) == (events_pb2.CLICK, NOW_MS - 5, 1.0)
    numbered = parse_json({"eventId": "e1", "userId": "u1", "itemId": "i1", "type": 4,
                           "timestampMs": NOW_MS - 5})
    assert numbered.type == events_pb2.PURCHASE


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b'{"eventId": "\xff"}', "not UTF-8"),
        (b'{"eventId": "e1"', "not a JSON Event"),  # truncated
        (b'{"eventId": "e1"} trailing', "not a JSON Event"),
        (b'{"eventId": 7}', "eventId"),  # wrong type
        (b'{"timestampMs": "soon"}', "timestampMs"),
        (b'{"timestampMs": 1.5}', "timestampMs"),
        (b'{"type": "TELEPORT"}', "TELEPORT"),  # unknown enum name
        (b'{"userid": "u1"}', "userid"),  # unknown field: rejected, not ignored
        (b'{"eventId": "a", "eventId": "b"}', "duplicate"),
        (b'{"context": {"device": 1}}', "context"),
        (b'{"properties": ' + b"[" * 1500 + b"]" * 1500 + b"}", "recursion"),
    ],
)
def test_bad_json_is_undecodable_with_its_reason(payload: bytes, detail: str) -> None:
    with pytest.raises(Undecodable, match="JSON") as raised:
        parse_event(payload, b"u1", now_ms=NOW_MS, limits=LIMITS)
    assert detail in str(raised.value)
    assert raised.value.reason == "undecodable"


def test_json_goes_through_the_same_checks_as_binary() -> None:
    with pytest.raises(MissingField, match="item_id"):
        parse_json({"eventId": "e1", "userId": "u1", "type": "VIEW", "timestampMs": NOW_MS})
    with pytest.raises(UnknownEventType):
        parse_json({"eventId": "e1", "userId": "u1", "itemId": "i1", "type": 77,
                    "timestampMs": NOW_MS})
    with pytest.raises(Oversized):
        parse_json({"eventId": "e1", "properties": {"blob": "x" * 5000}})


def test_only_a_leading_brace_means_json() -> None:
    assert is_json(b'{"eventId": "e1"}')
    assert not is_json(b"")
    assert not is_json(b' {"eventId": "e1"}')  # read as binary, and dead-lettered there
    assert not is_json(EVENT.SerializeToString())
    # An event id of 123 bytes puts "{" second, right after the tag of field 1 ("\n").
    long_id = events_pb2.Event(event_id="x" * 123, user_id="u1").SerializeToString()
    assert long_id[1:2] == b"{"
    assert decode_message(long_id, events_pb2.Event).event_id == "x" * 123


@settings(max_examples=2000, deadline=None)
@given(event=events(NOW_MS, ITEM_IDS))
def test_no_binary_event_is_taken_for_json(event: events_pb2.Event) -> None:
    payload = event.SerializeToString()
    assert not is_json(payload)
    assert decode_message(payload, events_pb2.Event) == event or event.value != event.value


@settings(max_examples=500, deadline=None)
@given(item=st.builds(events_pb2.Item, item_id=st.text(max_size=200), title=st.text(max_size=200),
                      categories=st.lists(st.text(max_size=10), max_size=3),
                      price=st.floats(allow_nan=False)))
def test_no_binary_item_is_taken_for_json(item: events_pb2.Item) -> None:
    assert not is_json(item.SerializeToString())


def test_items_in_json() -> None:
    item = parse_item(b'{"item_id": "i9", "title": "Lamp", "categories": ["home"], '
                      b'"availability": "IN_STOCK"}', max_bytes=1024)
    assert (item.item_id, item.title, list(item.categories)) == ("i9", "Lamp", ["home"])
    assert item.availability == events_pb2.IN_STOCK
    with pytest.raises(MissingField):
        parse_item(b'{"title": "Lamp"}', max_bytes=1024)
    with pytest.raises(Undecodable, match="JSON Item"):
        parse_item(b'{"itemId": "i9", "colour": "red"}', max_bytes=1024)
