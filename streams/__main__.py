"""``python -m streams [worker]``: read settings, build the worker, run it until stopped."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from contracts.console import setup_logging
from contracts.security import SecurityError, probe_kafka, probe_redis
from streams.errors import StreamsError
from streams.settings import StreamsSettings

log = logging.getLogger("streams")

USAGE = "usage: python -m streams [worker | dlq {list,redrive} ... | topics fix]"


def main(argv: list[str]) -> int:
    if argv[:1] != ["dlq"] and argv not in ([], ["worker"], ["topics", "fix"]):
        print(USAGE, file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        settings = StreamsSettings()
    except ValidationError as error:
        print(f"invalid STREAMREC_STREAMS_* settings:\n{error}", file=sys.stderr)
        return 2
    if argv[:1] == ["dlq"]:
        from streams.deadletters import main as dlq_main

        return dlq_main(argv[1:], settings)  # sets up logging after its own --verbose
    if argv[:1] == ["topics"]:
        setup_logging(settings.log_level)
        return fix_topics(settings)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:  # before the model loads: a refused password is known in a second, in one line
        asyncio.run(probe_kafka(settings.kafka_bootstrap, settings, client_id=settings.app_id))
        asyncio.run(probe_redis(settings.redis_url, settings))
    except SecurityError as error:
        log.error("cannot start: %s", error)
        return 1
    # Hugging Face reads this when its modules are imported, which streams.worker does.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from streams.worker import build_worker

    try:
        worker = build_worker(settings)
    except StreamsError as error:
        log.error("cannot start: %s", error)
        return 1
    log.info("worker built in %.1f s", time.monotonic() - started)
    # The models and libraries loaded so far are millions of long-lived objects; left in
    # the collected generations, every full collection walks them all and stalls the
    # event loop for tens of milliseconds (a freshness tail). They live until exit.
    gc.collect()
    gc.freeze()
    worker.execute_from_commandline()  # runs until SIGTERM/SIGINT, then exits the process
    return 0


def fix_topics(settings: StreamsSettings) -> int:
    """``topics fix``: the contract's settings on the worker's topics; 1 when it fails."""
    from contracts.topics import TopicContractError, apply_contract
    from streams.topics import CLIENT_ID, topic_specs

    try:
        specs = topic_specs(settings)
        lines = asyncio.run(apply_contract(settings.kafka_bootstrap, specs, client_id=CLIENT_ID,
                                           security=settings))
    except (TopicContractError, KafkaError) as error:
        log.error("cannot fix topics: %s", error)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
