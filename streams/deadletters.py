"""Operating the dead-letter topic: list dead letters by reason, re-drive them after a fix.

    python -m streams dlq list [--reason R ...] [--show N]
    python -m streams dlq redrive [--reason R ...] [--limit N] [--dry-run]

``redrive`` produces each selected dead letter's original key and payload, byte for byte,
back to the topic it came from (``origin_topic``: ``events`` or ``items``), where the
worker handles it again: accepted now, or dead-lettered again with its current reason.
A re-drive names the reasons it is for (the causes that were fixed). Progress is kept
per reason, as the committed offsets of the consumer group ``{app_id}-dlq-redrive.{reason}``
(``contracts.deadletters``),
so a dead letter is re-driven at most once however often the command runs, a run that
stops half-way goes on where it stopped, and re-driving one reason leaves the others
untouched for a later fix. ``list`` reads everything and commits
nothing.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence

from kafka import KafkaConsumer, KafkaProducer

from contracts.console import add_verbose_flag, progress_bar, setup_logging
from contracts.deadletters import (
    Summary,
    decode,
    read_to_end,
    redrive_group,
    redrive_reason,
    summarise,
)
from contracts.security import kafka_kwargs
from streams.settings import StreamsSettings


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
        bootstrap_servers=settings.bootstrap_servers(), group_id=redrive_group(settings.app_id, reason),
        enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
        **kafka_kwargs(settings),
    )
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks="all",
                             enable_idempotence=True, **kafka_kwargs(settings))
    try:
        return redrive_reason(
            consumer, producer, settings.topic_dlq, reason, limit=limit, dry_run=dry_run,
            progress=lambda records: progress_bar(records, desc=f"re-driving {reason}", unit="rec"),
        )
    finally:
        producer.close()
        consumer.close()


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
    try:
        return _run(args.command, settings, reasons, args)
    except LookupError as error:  # the dead-letter topic is not there
        raise SystemExit(f"error: {error}") from error


def _run(command: str, settings: StreamsSettings, reasons: frozenset[str],
         args: argparse.Namespace) -> int:
    if command == "list":
        print("\n".join(list_letters(settings, reasons, args.show).lines()))
        return 0
    sent = redrive(settings, reasons, args.limit, args.dry_run)
    verb = "would re-drive" if args.dry_run else "re-drove"
    print(f"{verb} {sum(sent.values())} dead letters: {dict(sent)}")
    return 0
