"""Operating the dead-letter topic: list dead letters by reason, re-drive them after a fix.

    python -m streams dlq list [--reason R ...] [--show N]
    python -m streams dlq redrive [--reason R ...] [--limit N] [--dry-run]

``redrive`` produces each selected dead letter's original key and payload, byte for byte,
back to the topic it came from (``origin_topic``: ``events`` or ``items``), where the
worker handles it again: accepted now, or dead-lettered again with its current reason.
A re-drive names the reasons it is for (the causes that were fixed). Progress is kept
per reason, as the committed offsets of the consumer group ``{app_id}-dlq-redrive.{reason}``,
so a dead letter is re-driven at most once however often the command runs, a run that
stops half-way goes on where it stopped, and re-driving one reason leaves the others
untouched for a later fix. ``list`` reads everything and commits
nothing.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from kafka.consumer.fetcher import ConsumerRecord

from contracts.console import add_verbose_flag, progress_bar, setup_logging
from contracts.security import kafka_kwargs
from protos import events_pb2
from streams.settings import StreamsSettings

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
        raise SystemExit(f"error: topic {topic!r} does not exist")
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


def list_letters(settings: StreamsSettings, reasons: frozenset[str], show: int) -> Summary:
    # Dead letters of events are written in transactions: read only committed ones.
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers(), group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed",
                             **kafka_kwargs(settings))
    try:
        records = progress_bar(read_to_end(consumer, settings.topic_dlq, from_committed=False),
                               desc="dead letters", unit="rec")
        return summarise((decode(r.value) for r in records), reasons, show)
    finally:
        consumer.close()


def redrive(settings: StreamsSettings, reasons: frozenset[str], limit: int | None,
            dry_run: bool) -> Counter[str]:
    """Re-drive the not yet re-driven dead letters of each of `reasons`; counts by reason."""
    if not reasons:
        raise ValueError("name the reasons to re-drive")
    sent: Counter[str] = Counter()
    for reason in sorted(reasons):
        sent.update(_redrive_reason(settings, reason, limit, dry_run))
    return sent


def _redrive_reason(settings: StreamsSettings, reason: str, limit: int | None,
                    dry_run: bool) -> Counter[str]:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        group_id=f"{settings.app_id}-dlq-redrive.{reason}",
        enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
        **kafka_kwargs(settings),
    )
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks="all",
                             enable_idempotence=True, **kafka_kwargs(settings))
    sent: Counter[str] = Counter()
    done: dict[TopicPartition, int] = {}  # next offset to read, per partition handled
    try:
        for record in progress_bar(read_to_end(consumer, settings.topic_dlq, from_committed=True,
                                               limit=limit),
                                   desc=f"re-driving {reason}", unit="rec"):
            done[TopicPartition(record.topic, record.partition)] = record.offset + 1
            letter = decode(record.value)
            if not selected(letter, frozenset({reason})):
                continue
            sent[letter.reason] += 1
            if not dry_run:
                producer.send(letter.origin_topic, key=letter.key or None, value=letter.payload)
        if not dry_run and done:
            producer.flush()  # every re-driven record acknowledged before progress is committed
            consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in done.items()})
    finally:
        producer.close()
        consumer.close()
    return sent


def main(argv: Sequence[str], settings: StreamsSettings) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams dlq", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="count dead letters by reason, with examples")
    listing.add_argument("--show", type=int, default=3, help="examples per reason")
    again = commands.add_parser("redrive", help="send dead letters back to their origin topic")
    again.add_argument("--limit", type=int, default=None, help="read at most N dead letters")
    again.add_argument("--dry-run", action="store_true", help="count, send and commit nothing")
    listing.add_argument("--reason", action="append", default=[],
                         help="only this reason (repeatable); default: all")
    again.add_argument("--reason", action="append", required=True,
                       help="a reason whose cause is fixed (repeatable)")
    for command in (listing, again):
        add_verbose_flag(command)
    args = parser.parse_args(list(argv))
    setup_logging(settings.log_level, verbose=args.verbose)
    reasons = frozenset(args.reason)
    if args.command == "list":
        print("\n".join(list_letters(settings, reasons, args.show).lines()))
        return 0
    sent = redrive(settings, reasons, args.limit, args.dry_run)
    verb = "would re-drive" if args.dry_run else "re-drove"
    print(f"{verb} {sum(sent.values())} dead letters: {dict(sent)}")
    return 0
