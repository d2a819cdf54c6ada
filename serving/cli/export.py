"""``python -m serving.cli.admin export-user USER``: everything held about a user, as JSON
(serving/export.py; docs/privacy.md). Reads Redis and Kafka with the serving settings
(``STREAMREC_SERVING_*``, security included); needs no running server.

The document goes to stdout (or ``--out FILE``), progress of the topic scans to stderr.
A user of whom nothing is held gets a whole document with ``"held": false`` and exit 0:
the answer to "what do you hold about me" is then "nothing", shown with where it was
looked for. A store that cannot be read exits 1 with one line and no document, since a
part of the answer would read as the whole of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from contracts.online import RedisKeys
from contracts.security import SecurityError, async_redis_client, probe_kafka, probe_redis
from serving.cluster import STORE_ERRORS
from serving.export import (
    TopicChoice,
    export_user,
    match_dead_letter,
    match_enriched,
    match_event,
    match_recommendation,
    match_relation,
    match_worker_state,
)
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


def add_parser(commands: Any) -> None:
    """The ``export-user`` subcommand on the admin CLI's subparsers."""
    parser = commands.add_parser("export-user", help="everything held about a user, as JSON "
                                 "(reads Redis and Kafka itself, no server needed)")
    parser.add_argument("user", help="the user id")
    parser.add_argument("--out", type=Path, help="write the document here instead of stdout")
    parser.add_argument("--relations", action="store_true",
                        help="also read the whole relations topic (the edges' history; their "
                             "state now is in the Redis following/followers in any case)")
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    parser.set_defaults(direct=run)


def topic_choices(settings: ServingSettings, *, relations: bool) -> list[TopicChoice]:
    """The topics an export reads: those keyed by user id in the user's partition, and
    ``relations`` whole when asked."""
    chosen = [TopicChoice("events", settings.topic_events, match_event),
              TopicChoice("events_enriched", settings.topic_enriched, match_enriched),
              TopicChoice("dead_letters", settings.topic_dlq, match_dead_letter),
              TopicChoice("recommendations", settings.topic_recommendations, match_recommendation),
              TopicChoice("worker_state", settings.users_changelog(), match_worker_state)]
    if relations:
        chosen.append(TopicChoice("relations", settings.topic_relations, match_relation, whole=True))
    return chosen


async def gather(settings: ServingSettings, user_id: str, *, relations: bool,
                 progress: bool) -> dict[str, Any]:
    await probe_redis(settings.redis_url, settings)
    await probe_kafka(settings.bootstrap_servers(), settings, client_id=settings.client_id)
    client = async_redis_client(settings.redis_url, settings,
                                socket_timeout=30, socket_connect_timeout=10)
    try:
        return await export_user(
            user_id, redis=client, keys=RedisKeys(settings.redis_prefix),
            bootstrap=settings.bootstrap_servers(), security=settings,
            client_id=f"{settings.client_id}-export",
            topics=topic_choices(settings, relations=relations),
            unread=() if relations else ("relations",), progress=progress)
    finally:
        await client.aclose()


def write(text: str, out: Path | None) -> None:
    """To stdout, or to `out` whole (a partly written file never stands in for it)."""
    if out is None:
        sys.stdout.write(text)
        return
    fd, temporary = tempfile.mkstemp(dir=out.parent or Path("."), prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    if not args.user:
        print("export-user: the user id is empty", file=sys.stderr)
        return 2
    settings = ServingSettings()
    try:
        exported = asyncio.run(gather(settings, args.user, relations=args.relations,
                                      progress=not args.no_progress))
    except (SecurityError, *STORE_ERRORS, KafkaError, asyncio.TimeoutError) as error:
        print(f"export of {args.user!r} failed, nothing written: {error or type(error).__name__}",
              file=sys.stderr)
        return 1
    write(json.dumps(exported, indent=2, ensure_ascii=False) + "\n", args.out)
    absent = [s["topic"] for s in exported["sources"]["topics"].values() if not s["exists"]]
    if absent:
        log.warning("topics %s do not exist: nothing of theirs is in the export", ", ".join(absent))
    if not exported["held"]:
        log.warning("nothing is held about user %r (document says \"held\": false)", args.user)
    return 0
