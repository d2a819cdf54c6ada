"""contracts.records: the one decoder of input records, binary or JSON."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from contracts.records import decode_record, is_json
from protos import events_pb2


def test_binary_and_json_decode_to_the_same_item() -> None:
    item = events_pb2.Item(item_id="i1", title="Lamp", availability=events_pb2.OUT_OF_STOCK)
    assert decode_record(item.SerializeToString(), events_pb2.Item) == item
    json_line = b'{"item_id": "i1", "title": "Lamp", "availability": "OUT_OF_STOCK"}'
    assert decode_record(json_line, events_pb2.Item) == item


@pytest.mark.parametrize("payload", [b'{"itemId": 1}', b'{"itemId": "\xff"}', b"{", b"\xff\xff"])
def test_what_cannot_be_decoded_raises_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_record(payload, events_pb2.Item)


def test_json_is_told_by_its_first_byte() -> None:
    assert is_json(b"{}") and not is_json(b"") and not is_json(b"\n{")
