"""Dead letters on the page: counted by reason with examples, and the re-drive of one
reason as a job in a thread whose progress the page shows (``contracts.deadletters``:
the same per-reason progress as ``python -m streams dlq redrive``)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from console.settings import ConsoleSettings
from contracts.deadletters import (
    Records,
    Summary,
    decode,
    read_to_end,
    redrive_group,
    redrive_reason,
    selected,
    summarise,
)
from contracts.security import kafka_kwargs

log = logging.getLogger(__name__)


def _consumer(settings: ConsoleSettings, group_id: str | None) -> KafkaConsumer:
    # dead letters of events are written in transactions: read only committed ones
    return KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group_id,
                         enable_auto_commit=False, auto_offset_reset="earliest",
                         isolation_level="read_committed", client_id="streamrec-console",
                         **kafka_kwargs(settings))


def summary(settings: ConsoleSettings) -> Summary:
    """Every dead letter counted by reason, a few examples each (commits nothing)."""
    consumer = _consumer(settings, None)
    try:
        records = read_to_end(consumer, settings.topic_dlq, from_committed=False)
        return summarise((decode(r.value) for r in records), frozenset(),
                         settings.dead_letter_examples)
    finally:
        consumer.close()


@dataclass
class Redrive:
    """One re-drive of one reason: how far it got."""

    job_id: int
    reason: str
    read: int = 0  # dead letters read (of every reason) since the reason's progress
    sent: int = 0  # of them re-driven
    done: bool = False
    error: str = ""

    def view(self) -> dict[str, Any]:
        return {"job": self.job_id, "reason": self.reason, "read": self.read, "sent": self.sent,
                "done": self.done, "error": self.error}


class Redrives:
    """Re-drive jobs, one at a time per reason, each in a worker thread."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self._settings = settings
        self.jobs: dict[int, Redrive] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def running(self, reason: str) -> Redrive | None:
        return next((j for j in self.jobs.values() if j.reason == reason and not j.done), None)

    def start(self, reason: str) -> Redrive:
        """The running job of `reason`, or a new one started."""
        job = self.running(reason)
        if job is not None:
            return job
        job = Redrive(next(self._ids), reason)
        self.jobs[job.job_id] = job
        task = asyncio.create_task(asyncio.to_thread(self._run, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def _run(self, job: Redrive) -> None:
        settings = self._settings
        consumer = _consumer(settings, redrive_group(settings.streams_app_id, job.reason))
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                 enable_idempotence=True, client_id="streamrec-console",
                                 **kafka_kwargs(settings))

        def counted(records: Records) -> Iterator[Any]:
            for record in records:
                job.read += 1
                if selected(decode(record.value), frozenset({job.reason})):
                    job.sent += 1
                yield record

        try:
            sent = redrive_reason(consumer, producer, settings.topic_dlq, job.reason,
                                  progress=counted)
            job.sent = sent.get(job.reason, 0)
            log.info("re-drove %s dead letters of %s", job.sent, job.reason)
        except Exception as error:  # shown on the page; the progress committed stays
            log.exception("re-drive of %s failed", job.reason)
            job.error = f"{type(error).__name__}: {error}"
        finally:
            producer.close()
            consumer.close()
            job.done = True

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
