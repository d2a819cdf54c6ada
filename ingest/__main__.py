"""Command line: ``python -m ingest {stats,catalog,replay,relations,topics} ...``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from ingest import movielens
from ingest.dataset import Dataset, Selection, describe, parse_users, select
from ingest.errors import IngestError, ReplayOptionError
from contracts.console import add_verbose_flag, setup_logging
from contracts.topics import TopicContractError, apply_contract
from contracts.relations import RelationLimits
from ingest.relations import read_relations
from ingest.replay import (
    CLIENT_ID,
    ReplayOptions,
    make_producer,
    prepare_topics,
    publish_catalog,
    publish_relations,
    replay,
    topic_specs,
)
from ingest.settings import IngestSettings
from ingest.tabular import load_tabular

log = logging.getLogger("ingest")

_SECONDS_BELOW = 1e11


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="python -m ingest",
        description="Bring a data set into Kafka: catalog to `items`, interactions to `events`, "
        "an edge list of follows and friendships to `relations`. "
        "Kafka address and topics come from STREAMREC_INGEST_* variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("stats", "print counts of a data set (no Kafka)"),
        ("catalog", "produce the catalog to the items topic"),
        ("replay", "produce the catalog, then the interactions in time order"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        _add_source_arguments(sub)
        if name == "replay":
            _add_replay_arguments(sub)
        if name != "stats":
            sub.add_argument("--no-progress", action="store_true", help="hide progress bars")
        add_verbose_flag(sub)
    relations = commands.add_parser(
        "relations", help="produce an edge list to the relations topic",
        description="Check every row of a CSV or Parquet edge list (follower_id, followee_id, "
        "kind; optional timestamp, removed, share_name), then produce it to the relations "
        "topic, a removed edge as a tombstone. A file with bad rows is refused whole.",
    )
    relations.add_argument("file", type=Path, help="CSV (.csv, .csv.gz, .tsv) or Parquet file")
    relations.add_argument(
        "--column", action="append", default=[], metavar="FIELD=NAME",
        help="column for a field (follower_id, followee_id, kind, timestamp, removed, share_name)",
    )
    relations.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_verbose_flag(relations)
    topics = commands.add_parser(
        "topics", help="set the contract's settings on the topics ingest writes",
        description="fix: create the events, items and relations topics if missing and set "
        "their cleanup policy to the contract's (other settings stay)",
    )
    topics.add_argument("action", choices=["fix"])
    add_verbose_flag(topics)
    return parser


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("source (a packaged data set, or files)")
    group.add_argument("--source", choices=["movielens"], help="packaged data set: MovieLens-1M")
    group.add_argument("--interactions", type=Path, help="CSV or Parquet file of interactions")
    group.add_argument("--items", type=Path, help="CSV or Parquet file of items")
    group.add_argument("--name", help="data set name used in event ids (default: file stem)")
    group.add_argument(
        "--column", action="append", default=[], metavar="FIELD=NAME",
        help="interactions column for a field (user_id, item_id, timestamp, event_type, value)",
    )
    group.add_argument(
        "--item-column", action="append", default=[], metavar="FIELD=NAME",
        help="items column for a field (item_id, title, description, categories, price, "
        "availability)",
    )
    group.add_argument(
        "--default-event-type", default="view",
        help="event type of rows without one (default: view)",
    )


def _add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    pace = parser.add_argument_group("pacing")
    pace.add_argument(
        "--speedup", type=float, default=1.0,
        help="X times real time; 0 sends as fast as possible (default: 1)",
    )
    pace.add_argument(
        "--max-gap-s", type=float, default=5.0,
        help="longest wait between two events, in seconds (default: 5)",
    )
    pace.add_argument("--rate", type=float, help="at most this many events per second")
    pace.add_argument(
        "--rebase-now", action="store_true",
        help="shift event times so the last selected event happens now",
    )
    pick = parser.add_argument_group("selection (applied in this order)")
    pick.add_argument("--start", help="first event time: ISO-8601 or epoch seconds/ms")
    pick.add_argument("--end", help="events before this time: ISO-8601 or epoch seconds/ms")
    pick.add_argument("--users", help="first N users to appear, or a fraction in (0, 1)")
    pick.add_argument("--limit", type=int, help="at most N events")
    parser.add_argument(
        "--skip-catalog", action="store_true", help="do not produce the catalog first"
    )


def load_source(args: argparse.Namespace) -> Dataset:
    """The data set the arguments name."""
    if args.source and (args.interactions or args.items):
        raise ReplayOptionError("give either --source or --interactions/--items, not both")
    if args.source == "movielens":
        return movielens.load()
    if not (args.interactions or args.items):
        raise ReplayOptionError("give --source movielens, or --interactions and/or --items")
    return load_tabular(
        args.interactions,
        args.items,
        name=args.name,
        interaction_columns=parse_column_map(args.column),
        item_columns=parse_column_map(args.item_column),
        default_event_type=args.default_event_type,
    )


def parse_column_map(pairs: Sequence[str]) -> dict[str, str]:
    """``["user_id=uid"]`` -> ``{"user_id": "uid"}``."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise ReplayOptionError(f"column mapping must look like FIELD=NAME, got {pair!r}")
        mapping[field.strip()] = column.strip()
    return mapping


def parse_instant(text: str | None, option: str) -> int | None:
    """ISO-8601 (UTC unless an offset is given) or epoch seconds/ms -> epoch ms."""
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        try:
            stamp = pd.Timestamp(text)
        except ValueError:
            raise ReplayOptionError(
                f"{option} must be ISO-8601 or epoch seconds/ms, got {text!r}"
            ) from None
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
        return int(stamp.as_unit("ns").value // 1_000_000)
    return int(round(number * 1000 if abs(number) < _SECONDS_BELOW else number))


def selection_from(args: argparse.Namespace) -> Selection:
    """The `Selection` of the replay arguments."""
    return Selection(
        start_ms=parse_instant(args.start, "--start"),
        end_ms=parse_instant(args.end, "--end"),
        users=parse_users(args.users) if args.users is not None else None,
        limit=args.limit,
    )


async def _relations(settings: IngestSettings, args: argparse.Namespace) -> list[str]:
    """Check the whole file first (nothing is sent when a row is bad), then produce it."""
    relations = read_relations(
        args.file, parse_column_map(args.column), now_ms=int(time.time() * 1000),
        limits=RelationLimits(settings.max_relation_bytes, max_id_chars=settings.max_id_chars),
    )
    await prepare_topics(settings, topic_specs(settings, items=False, events=False, relations=True))
    producer = make_producer(settings)
    await producer.start()
    try:
        sent = await publish_relations(producer, settings, relations, progress=not args.no_progress)
    finally:
        await producer.stop()
    removed = sum(relation.removed for relation in relations)
    return [f"relations sent: {sent} -> {settings.topic_relations} ({removed} removals)"]


async def _produce(
    settings: IngestSettings, dataset: Dataset, args: argparse.Namespace
) -> list[str]:
    progress = not args.no_progress
    if args.command == "catalog":
        await prepare_topics(settings, topic_specs(settings, events=False))
        producer = make_producer(settings)
        await producer.start()
        try:
            sent = await publish_catalog(producer, settings, dataset.items, progress=progress)
        finally:
            await producer.stop()
        return [f"items sent:   {sent} -> {settings.topic_items}"]
    options = ReplayOptions(
        speedup=args.speedup,
        max_gap_s=args.max_gap_s,
        rate=args.rate,
        rebase_now=args.rebase_now,
        send_catalog=not args.skip_catalog,
        progress=progress,
    )
    chosen = select(dataset.interactions, selection_from(args))
    await prepare_topics(settings, topic_specs(settings, items=not args.skip_catalog))
    producer = make_producer(settings)
    await producer.start()
    try:
        summary = await replay(producer, settings, dataset, chosen, options)
    finally:
        await producer.stop()
    return summary.lines()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; 0 on success, 2 on bad input, 3 when Kafka fails."""
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    try:
        settings = IngestSettings()
        if args.command == "topics":
            print("\n".join(asyncio.run(apply_contract(
                settings.kafka_bootstrap, topic_specs(settings, relations=True),
                client_id=CLIENT_ID, security=settings))))
            return 0
        if args.command == "relations":
            print("\n".join(asyncio.run(_relations(settings, args))))
            return 0
        if args.command == "replay":
            selection_from(args)  # reject bad selection options before loading data
        dataset = load_source(args)
        lines = describe(dataset) if args.command == "stats" else asyncio.run(
            _produce(settings, dataset, args)
        )
    except (IngestError, ValidationError, TopicContractError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KafkaError as error:
        print(f"error: Kafka at {settings.kafka_bootstrap}: {error!r}", file=sys.stderr)
        return 3
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
