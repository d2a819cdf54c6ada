"""The dead-letter topic's records read and re-driven (docs/contracts.md, "Dead letters"):
what the streams worker's ``dlq`` command and the operator console both do with them.

A re-drive of one reason produces each of its dead letters' original key and payload,
byte for byte, back to the topic it came from (``origin_topic``). Progress is kept per
reason as the committed offsets of the consumer group :func:`redrive_group`, so a dead
letter is re-driven at most once, whoever re-drives it, and a re-drive that stops
half-way goes on where it stopped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata

from protos import events_pb2

UNREADABLE = "unreadable_dead_letter"  # a record on the DLQ that is no DeadLetter itself


@dataclass
class Summary:
    """Dead letters counted by reason and origin topic, with a few examples per reason."""

    by_reason: Counter[str] = field(default_factory=Counter)
    by_origin: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[events_pb2.DeadLetter]] = field(default_factory=dict)

    def add(self, letter: events_pb2.DeadLetter, keep: int) -> None:
        self.by_reason[letter.reason] += 1
        self.by_origin[letter.origin_topic] += 1
        kept = self.examples.setdefault(letter.reason, [])
        if len(kept) < keep:
            kept.append(letter)

    def lines(self) -> list[str]:
        total = sum(self.by_reason.values())
        lines = [f"{total} dead letters"]
        for reason, count in self.by_reason.most_common():
            lines.append(f"  {reason:<22} {count:>9}")
            for letter in self.examples.get(reason, []):
                lines.append(
                    f"      {letter.origin_topic}[{letter.origin_partition}]@"
                    f"{letter.origin_offset}: {letter.detail[:160]}"
                )
        if self.by_origin:
            origins = ", ".join(f"{topic} {n}" for topic, n in self.by_origin.most_common())
            lines.append(f"from: {origins}")
        return lines


def decode(value: bytes | None) -> events_pb2.DeadLetter:
    """The DeadLetter in a DLQ record; an unreadable one becomes a letter saying so."""
    try:
        return events_pb2.DeadLetter.FromString(value or b"")
    except DecodeError as error:
        return events_pb2.DeadLetter(reason=UNREADABLE, detail=str(error))


def selected(letter: events_pb2.DeadLetter, reasons: frozenset[str]) -> bool:
    """Whether `letter` is one to act on: of one of `reasons` (all when empty), and
    re-drivable at all (it knows the topic it came from)."""
    if letter.reason == UNREADABLE or not letter.origin_topic:
        return False
    return not reasons or letter.reason in reasons


def summarise(letters: Iterable[events_pb2.DeadLetter], reasons: frozenset[str],
              keep: int) -> Summary:
    summary = Summary()
    for letter in letters:
        if not reasons or letter.reason in reasons:
            summary.add(letter, keep)
    return summary


def read_to_end(consumer: KafkaConsumer, topic: str, *, from_committed: bool,
                limit: int | None = None) -> Iterator[ConsumerRecord]:
    """Records of every partition of `topic` up to its end offsets at the time of the call."""
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not partitions:
        raise LookupError(f"topic {topic!r} does not exist")
    consumer.assign(partitions)
    if not from_committed:
        consumer.seek_to_beginning(*partitions)
    ends = consumer.end_offsets(partitions)
    remaining = {tp for tp in partitions if consumer.position(tp) < ends[tp]}
    count = 0
    while remaining:
        for tp, records in consumer.poll(timeout_ms=1000).items():
            for record in records:
                if record.offset >= ends[tp]:
                    remaining.discard(tp)
                    break
                yield record
                count += 1
                if limit is not None and count >= limit:
                    return
            if consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)


def redrive_group(app_id: str, reason: str) -> str:
    """The consumer group whose committed offsets are the re-drive progress of `reason`."""
    return f"{app_id}-dlq-redrive.{reason}"


Records = Iterator[ConsumerRecord]


def redrive_reason(consumer: KafkaConsumer, producer: KafkaProducer, topic_dlq: str,
                   reason: str, *, limit: int | None = None, dry_run: bool = False,
                   progress: Callable[[Records], Records] = lambda records: records,
                   ) -> Counter[str]:
    """Re-drive the not yet re-driven dead letters of `reason`; counts by reason.

    `consumer` is of :func:`redrive_group` (no auto-commit, read_committed); `progress`
    wraps the records read (a bar, a counter). Every re-driven record is acknowledged
    before the progress is committed."""
    sent: Counter[str] = Counter()
    done: dict[TopicPartition, int] = {}  # next offset to read, per partition handled
    records = read_to_end(consumer, topic_dlq, from_committed=True, limit=limit)
    for record in progress(records):
        done[TopicPartition(record.topic, record.partition)] = record.offset + 1
        letter = decode(record.value)
        if not selected(letter, frozenset({reason})):
            continue
        sent[letter.reason] += 1
        if not dry_run:
            producer.send(letter.origin_topic, key=letter.key or None, value=letter.payload)
    if not dry_run and done:
        producer.flush()
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in done.items()})
    return sent
