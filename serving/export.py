"""Everything streamrec holds about one user, as one JSON document (docs/privacy.md).

Read directly from the stores with serving's settings (no server needs to run): the
user's online state in Redis, and their records in the topics keyed by user id. Such a
topic is read in one partition only, the one the user's key maps to under Kafka's
default partitioner (murmur2 of the UTF-8 id, as aiokafka's and the Java client's),
from its beginning to its end offset now, read committed. ``relations`` is keyed by edge,
so a user's edges are spread over every partition: it is read whole, only when asked
(the same edges, as they are now, are in the Redis ``following`` and ``followers``).

The pure parts (what a record or a key says about the user) are plain functions; the
readers around them only fetch.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from redis.asyncio import Redis

from contracts.catchup import read_to_end
from contracts.console import progress_bar
from contracts.online import (
    EVENT_TYPE_NAMES,
    NEWEST_FIELD,
    VECTOR_DTYPE,
    VECTOR_FIELD,
    VERSION_FIELD,
    WRITTEN_AT_FIELD,
    RedisKeys,
)
from contracts.records import decode_record
from contracts.relations import KIND_NAMES, BadKey, parse_key
from contracts.security import KafkaSecurity, kafka_kwargs
from contracts.social import EdgeFlags, FeedFormatError, parse_member
from protos import events_pb2
from serving.feeds import topic_partitions

log = logging.getLogger(__name__)

FORMAT = 1  # the document's format; a change that breaks a reader raises it
_PARTITIONER = DefaultPartitioner()

# What a record says about the user: its entry in the document, or None if it is not theirs.
Match = Callable[[ConsumerRecord, str], "dict[str, Any] | None"]


def partition_of(user_id: str, partitions: int) -> int:
    """The partition a record keyed by `user_id` goes to under the default partitioner."""
    numbers = list(range(partitions))
    return int(_PARTITIONER(user_id.encode("utf-8"), numbers, numbers))


def as_dict(message: Message) -> dict[str, Any]:
    """A message in its JSON mapping with the .proto's field names (bytes as base64)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _where(record: ConsumerRecord) -> dict[str, Any]:
    return {"partition": record.partition, "offset": record.offset,
            "timestamp_ms": record.timestamp}


def match_event(record: ConsumerRecord, user_id: str) -> dict[str, Any] | None:
    """A record of ``events``: an event of the user (binary or JSON), or a record under
    their key that is no event at all (kept as its bytes and why)."""
    keyed = record.key is not None and _text(record.key) == user_id
    if record.value is None:
        return _where(record) | {"tombstone": True} if keyed else None
    try:
        event = decode_record(record.value, events_pb2.Event)
    except DecodeError as error:
        if not keyed:
            return None
        return _where(record) | {"undecodable": str(error)[:200],
                                 "value_base64": base64.b64encode(record.value).decode()}
    if event.user_id != user_id and not keyed:
        return None
    return _where(record) | {"event": as_dict(event)}


def match_enriched(record: ConsumerRecord, user_id: str) -> dict[str, Any] | None:
    """A record of ``events.enriched`` whose event is the user's."""
    try:
        enriched = events_pb2.EnrichedEvent.FromString(record.value or b"")
    except DecodeError:
        return None
    return _where(record) | as_dict(enriched) if enriched.event.user_id == user_id else None


def match_dead_letter(record: ConsumerRecord, user_id: str) -> dict[str, Any] | None:
    """A dead letter under the user's key, or whose payload is an event of the user; the
    payload decoded when it is an event."""
    try:
        letter = events_pb2.DeadLetter.FromString(record.value or b"")
    except DecodeError:
        return None
    event: events_pb2.Event | None
    try:
        event = decode_record(letter.payload, events_pb2.Event)
    except DecodeError:
        event = None
    if _text(letter.key) != user_id and (event is None or event.user_id != user_id):
        return None
    entry = _where(record) | as_dict(letter)
    if event is not None:
        entry["event"] = as_dict(event)
    return entry


def match_recommendation(record: ConsumerRecord, user_id: str) -> dict[str, Any] | None:
    """A logged recommendation shown to the user."""
    try:
        served = events_pb2.RecommendationLog.FromString(record.value or b"")
    except DecodeError:
        return None
    return _where(record) | as_dict(served) if served.user_id == user_id else None


def match_worker_state(record: ConsumerRecord, user_id: str) -> dict[str, Any] | None:
    """A record of the streams worker's users changelog under the user's key: their state
    as the worker keeps it (its own JSON, ``streams/history.py``: ``h`` the newest events
    as item, type, time, weight; ``a`` recent event ids and their offsets), or a tombstone."""
    if record.key is None or _text(record.key) != user_id:
        return None
    if record.value is None:
        return _where(record) | {"tombstone": True}
    try:
        return _where(record) | {"state": json.loads(record.value)}
    except ValueError:
        return _where(record) | {"value_base64": base64.b64encode(record.value).decode()}


def match_relation(record: ConsumerRecord, user_id: str) -> dict[str, Any] | None:
    """A record of ``relations`` of an edge from or to the user; a tombstone is a removal
    compaction has not yet dropped the older records of."""
    try:
        edge = parse_key(record.key or b"")
    except BadKey:
        return None
    if user_id not in (edge.follower_id, edge.followee_id):
        return None
    entry = _where(record) | {"follower_id": edge.follower_id, "followee_id": edge.followee_id,
                              "kind": KIND_NAMES[edge.kind]}
    if record.value is None:
        return entry | {"removed": True}
    try:
        return entry | {"relation": as_dict(events_pb2.Relation.FromString(record.value))}
    except DecodeError:
        return entry | {"value_base64": base64.b64encode(record.value).decode()}


@dataclass
class TopicScan:
    """What was read of one topic for the export, and what in it is the user's."""

    topic: str
    partitions: list[int] = field(default_factory=list)
    exists: bool = True
    records_read: int = 0
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> [from, to)
    matched: list[dict[str, Any]] = field(default_factory=list)

    def source(self) -> dict[str, Any]:
        """The document's account of the read: which partitions and offsets."""
        if not self.exists:
            return {"topic": self.topic, "exists": False}
        return {"topic": self.topic, "exists": True, "records_read": self.records_read,
                "partitions": [{"partition": p, "from_offset": first, "to_offset": end}
                               for p, (first, end) in sorted(self.ranges.items())],
                "matched": len(self.matched)}


async def scan_topic(consumer: AIOKafkaConsumer, scan: TopicScan, user_id: str, match: Match,
                     *, progress: bool) -> None:
    """Every committed record of `scan.partitions` up to their end offsets now, kept in
    `scan.matched` where `match` says it is the user's."""
    for number in scan.partitions:
        tp = TopicPartition(scan.topic, number)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        bar = progress_bar(desc=f"{scan.topic}[{number}]", total=end - first, unit="records",
                           enabled=progress)

        def handle(records: list[ConsumerRecord], end: int = end) -> None:
            mine = [r for r in records if r.offset < end]
            scan.records_read += len(mine)
            bar.update(len(mine))
            for record in mine:
                entry = match(record, user_id)
                if entry is not None:
                    scan.matched.append(entry)

        try:
            ends = await read_to_end(consumer, [tp], handle)
        finally:
            bar.close()
        scan.ranges[number] = (first, ends[tp])


async def read_topics(bootstrap: list[str], security: KafkaSecurity, *, client_id: str,
                      user_id: str, wanted: Iterable[tuple[str, Match, bool]],
                      progress: bool) -> list[TopicScan]:
    """One scan per ``(topic, match, whole)``: the user's partition, or every partition
    when `whole`. A topic that does not exist is reported as such, not created."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, client_id=client_id,
                                isolation_level="read_committed", **kafka_kwargs(security))
    await consumer.start()
    scans: list[TopicScan] = []
    try:
        for topic, match, whole in wanted:
            found = await topic_partitions(bootstrap, client_id, topic, security)
            scan = TopicScan(topic, exists=bool(found))
            if found:
                scan.partitions = ([tp.partition for tp in found] if whole
                                   else [partition_of(user_id, len(found))])
                await scan_topic(consumer, scan, user_id, match, progress=progress)
            scans.append(scan)
    finally:
        await consumer.stop()
    return scans


def _ttl(seconds: int) -> int | None:
    """A key's TTL reply as seconds left; None for a key that never expires."""
    return None if seconds < 0 else seconds


def vector_entry(key: str, fields: dict[bytes, bytes], ttl: int) -> dict[str, Any]:
    """The ``uv`` hash: version, times and the vector as a list of float32 values (each
    the shortest decimal that reads back as the same float32); bytes that are not a whole
    number of floats as base64. Fields of no known meaning are kept as text."""
    named = {_text(name): value for name, value in fields.items()}
    raw = named.pop(VECTOR_FIELD, b"")
    entry: dict[str, Any] = {"key": key, "ttl_s": _ttl(ttl)}
    if VERSION_FIELD in named:
        entry["version"] = _text(named.pop(VERSION_FIELD))
    for name, label in ((NEWEST_FIELD, "newest_event_ms"), (WRITTEN_AT_FIELD, "written_at_ms")):
        if name in named:
            entry[label] = int(float(named.pop(name)))
    if raw and len(raw) % VECTOR_DTYPE.itemsize == 0:
        values = np.frombuffer(raw, dtype=VECTOR_DTYPE)
        entry["dim"] = len(values)
        entry["values"] = [float(str(v)) for v in values]
    elif raw:
        entry["vector_base64"] = base64.b64encode(raw).decode()
    if named:
        entry["other_fields"] = {name: _text(value) for name, value in named.items()}
    return entry


def items_entry(key: str, pairs: list[tuple[bytes, float]], ttl: int) -> dict[str, Any]:
    """A ``seen`` or ``acts`` sorted set, newest first: item -> time (ms)."""
    return {"key": key, "ttl_s": _ttl(ttl),
            "items": [{"item_id": _text(item), "timestamp_ms": int(ts)} for item, ts in pairs]}


def feed_entry(key: str, pairs: list[tuple[bytes, float]], ttl: int) -> dict[str, Any]:
    """The social feed, strongest first: who did what to which item, and the stored score
    (``contracts.social.feed_score``: log weight + time over the decay constant)."""
    entries: list[dict[str, Any]] = []
    for member, score in pairs:
        try:
            actor, event_type, item = parse_member(member)
        except FeedFormatError:
            entries.append({"member": _text(member), "score": score})
            continue
        entries.append({"actor_id": actor, "item_id": item, "score": score,
                        "event_type": EVENT_TYPE_NAMES.get(event_type, str(event_type))})
    return {"key": key, "ttl_s": _ttl(ttl), "entries": entries}


def edges_entry(key: str, fields: dict[bytes, bytes]) -> dict[str, Any]:
    """A ``following`` or ``followers`` hash: the other user, the kinds of edge between
    the two and those for which the followee allows their name to be shown."""
    users: list[dict[str, Any]] = []
    for other, raw in sorted(fields.items()):
        flags = EdgeFlags.decode(raw)
        bits = {name: 1 << (kind - 1) for kind, name in KIND_NAMES.items()}
        users.append({"user_id": _text(other),
                      "kinds": [name for name, bit in bits.items() if flags.kinds & bit],
                      "share_name": [name for name, bit in bits.items()
                                     if flags.kinds & flags.named & bit]})
    return {"key": key, "users": users}


async def read_online(client: Redis, keys: RedisKeys, user_id: str) -> dict[str, Any]:
    """The user's keys in Redis, each as its entry; a key that does not exist is left out
    (``acts`` by type name; ``hot_account``: whether their acts are read on demand). The
    user's keys share their hash tag (one slot, on a Redis Cluster too) and are read in
    one transaction; the global ``hot`` set, in another slot, after it."""
    types = sorted(EVENT_TYPE_NAMES)
    async with client.pipeline(transaction=True) as pipe:  # one moment's state
        for name in (keys.user_vector(user_id), keys.seen(user_id),
                     *(keys.acts(t, user_id) for t in types), keys.social(user_id)):
            if name == keys.user_vector(user_id):
                pipe.hgetall(name)
            else:
                pipe.zrevrange(name, 0, -1, withscores=True)
            pipe.ttl(name)
        pipe.hgetall(keys.following(user_id))
        pipe.hgetall(keys.followers(user_id))
        replies = await pipe.execute()
    hot = await client.sismember(keys.hot(), user_id)
    vector, vector_ttl, seen, seen_ttl, *rest = replies
    acts = {EVENT_TYPE_NAMES[t]: (keys.acts(t, user_id), rest[2 * n], rest[2 * n + 1])
            for n, t in enumerate(types)}
    feed, feed_ttl, following, followers = rest[2 * len(types):]
    online: dict[str, Any] = {}
    if vector:
        online["vector"] = vector_entry(keys.user_vector(user_id), vector, vector_ttl)
    if seen:
        online["seen"] = items_entry(keys.seen(user_id), seen, seen_ttl)
    by_type = {name: items_entry(key, pairs, ttl) for name, (key, pairs, ttl) in acts.items() if pairs}
    if by_type:
        online["acts"] = by_type
    if feed:
        online["social_feed"] = feed_entry(keys.social(user_id), feed, feed_ttl)
    if following:
        online["following"] = edges_entry(keys.following(user_id), following)
    if followers:
        online["followers"] = edges_entry(keys.followers(user_id), followers)
    if hot:
        online["hot_account"] = True
    return online


def document(user_id: str, *, online: dict[str, Any], scans: dict[str, TopicScan],
             redis_prefix: str, exported_at_ms: int, unread: Iterable[str] = ()
             ) -> dict[str, Any]:
    """The export: the user, whether anything is held, where it was looked for, then what
    was found (`scans` by the document's name for each topic; `unread`: names of topics
    not read this time, null in the document)."""
    held = bool(online) or any(scan.matched for scan in scans.values())
    return {
        "format": FORMAT,
        "user_id": user_id,
        "exported_at_ms": exported_at_ms,
        "held": held,
        "sources": {"redis_prefix": redis_prefix,
                    "topics": {name: scan.source() for name, scan in scans.items()}},
        "online": online,
        **{name: scan.matched for name, scan in scans.items()},
        **{name: None for name in unread},
    }


@dataclass(frozen=True)
class TopicChoice:
    """A topic of the export: the document's name for it, the topic, how to match."""

    name: str
    topic: str
    match: Match
    whole: bool = False  # every partition (a topic not keyed by user)


async def export_user(user_id: str, *, redis: Redis, keys: RedisKeys, bootstrap: list[str],
                      security: KafkaSecurity, client_id: str, topics: list[TopicChoice],
                      unread: Iterable[str] = (), progress: bool = True) -> dict[str, Any]:
    """Read the user's online state, then scan `topics`; the document (:func:`document`)."""
    online = await read_online(redis, keys, user_id)
    scans = await read_topics(bootstrap, security, client_id=client_id, user_id=user_id,
                              wanted=[(t.topic, t.match, t.whole) for t in topics],
                              progress=progress)
    return document(user_id, online=online,
                    scans={t.name: scan for t, scan in zip(topics, scans, strict=True)},
                    redis_prefix=keys.prefix, exported_at_ms=time.time_ns() // 1_000_000,
                    unread=unread)
