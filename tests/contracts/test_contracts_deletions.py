"""contracts.deletions: the control record's codec and its refusals, the rule events are
left out by, and the compacted topic read whole (an aborted request is no deletion)."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer

from contracts.deletions import (
    BAD_CONTROL_RECORD,
    CONTROL_HEADER,
    ControlRecordError,
    Deletions,
    control_headers,
    is_control,
    parse_control,
    read_deletions,
    user_id_violation,
)
from protos import events_pb2


def _deletion(user: str = "ada", at: int = 1_700_000_000_000) -> events_pb2.UserDeletion:
    return events_pb2.UserDeletion(user_id=user, requested_at_ms=at, requested_by="test")


def test_a_control_record_gives_back_its_deletion() -> None:
    deletion = _deletion("a|b ü")
    assert is_control(control_headers()) and not is_control(()) and not is_control(None)
    assert parse_control("a|b ü".encode(), deletion.SerializeToString(), control_headers()) == deletion


@pytest.mark.parametrize(("key", "value", "headers", "why"), [
    (b"ada", _deletion().SerializeToString(), [(CONTROL_HEADER, b"user-export")], "kinds"),
    (b"ada", _deletion().SerializeToString(), [*control_headers(), *control_headers()], "kinds"),
    (b"ada", b"\xff\xfe", control_headers(), "not a UserDeletion"),
    (b"", _deletion("").SerializeToString(), control_headers(), "user_id is required"),
    (b"x" * 1025, _deletion("x" * 1025).SerializeToString(), control_headers(), "longer than"),
    (b"bob", _deletion().SerializeToString(), control_headers(), "key is not"),
    (None, _deletion().SerializeToString(), control_headers(), "key is not"),
    (b"ada", _deletion(at=0).SerializeToString(), control_headers(), "requested_at_ms"),
])
def test_a_bad_control_record_is_refused_with_its_reason(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], why: str
) -> None:
    with pytest.raises(ControlRecordError, match=why) as refused:
        parse_control(key, value, headers)
    assert refused.value.reason == BAD_CONTROL_RECORD


def test_a_user_id_is_required_and_bounded() -> None:
    assert user_id_violation("ada") is None
    assert user_id_violation("").reason == "missing_field"  # type: ignore[union-attr]
    assert user_id_violation("abcd", max_chars=3).reason == "too_long"  # type: ignore[union-attr]


def test_events_before_the_newest_deletion_are_left_out_and_later_ones_kept() -> None:
    deletions = Deletions()
    deletions.fold([
        (b"ada", _deletion("ada", 100).SerializeToString()),
        (b"ada", _deletion("ada", 200).SerializeToString()),  # asked again: the newest wins
        (b"bob", _deletion("bob", 100).SerializeToString()),
        (b"bob", None),  # a tombstone: no deletion
        (b"eve", b"\xff\xfe"),
        (None, _deletion("kim", 100).SerializeToString()),
    ])
    assert deletions.requested_at_ms == {"ada": 200} and deletions.undecodable == 1
    assert deletions.removes("ada", 199) and not deletions.removes("ada", 200)
    assert not deletions.removes("bob", 0) and not deletions.removes("carol", 0)


@pytest.mark.integration
async def test_the_topic_is_read_whole_and_committed_only(
    kafka_bootstrap: str, create_topics, unique: str,
) -> None:
    assert len(await read_deletions(kafka_bootstrap, f"absent-{unique}", client_id="test")) == 0
    (topic,) = create_topics([f"deletions-{unique}"], partitions=3,
                             config={"cleanup.policy": "compact"})
    plain = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for n in range(6):
        user = f"u{n}"
        plain.send(topic, key=user.encode(), value=_deletion(user, 100 + n).SerializeToString())
    plain.flush()
    plain.close()
    aborted = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"t-{unique}")
    await aborted.start()
    try:
        await aborted.begin_transaction()
        await aborted.send_and_wait(topic, _deletion("zed").SerializeToString(), key=b"zed")
        await aborted.abort_transaction()
    finally:
        await aborted.stop()
    deletions = await read_deletions(kafka_bootstrap, topic, client_id="test")
    assert deletions.requested_at_ms == {f"u{n}": 100 + n for n in range(6)}
