"""Record values of the input topics ``events`` and ``items``: a protobuf message in its
binary encoding or in its JSON mapping, told apart per record (docs/contracts.md §2).

Every reader of those topics decodes with :func:`decode_record`, so that a JSON record
a shop sends means the same to the streams worker, serving's catalog and the trainer.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

M = TypeVar("M", bound=Message)

JSON_OPEN = b"{"[0]


def is_json(payload: bytes) -> bool:
    """Whether a record value is the JSON mapping of its message rather than the binary
    encoding: its first byte is ``{``. A serializer writes a message's fields in field
    number order, and the first byte of a field is its tag ``number << 3 | wire type``:
    ``{`` (0x7B) would be field 15 opening a group, a field neither ``Event`` nor
    ``Item`` has, so no encoding of either that a serializer writes begins with it."""
    return bool(payload) and payload[0] == JSON_OPEN


def decode_record(payload: bytes, message: type[M]) -> M:
    """The message in a record value, binary or JSON; raises ``DecodeError`` saying why.
    JSON takes the field names of the .proto or their lowerCamel forms, enum values by
    name or number; an unknown field name is rejected (a typo would otherwise pass as an
    empty field). A binary record costs one byte comparison more than ``FromString``."""
    if not is_json(payload):
        return message.FromString(payload)
    name = message.DESCRIPTOR.name
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DecodeError(f"JSON {name} is not UTF-8: {error}") from None
    try:
        return json_format.Parse(text, message(), ignore_unknown_fields=False)
    except (json_format.ParseError, RecursionError) as error:
        raise DecodeError(f"not a JSON {name}: {error}") from None
