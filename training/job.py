"""One training run: log and catalog in, evaluated artifact out, promoted and announced."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer

from protos import events_pb2
from training.announce import announce_release, publish_item_vectors, release_message
from training.artifact import data_window, promote, write_artifact
from training.encoder import ItemEncoder, item_text
from training.errors import EmptyLogError
from training.evaluate import evaluate, leave_last_out
from training.eventlog import EventLog, read_catalog, read_event_log
from training.settings import TrainingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """What one run read, measured and wrote."""

    version: str
    path: Path
    previous: str | None
    n_events: int
    n_items: int
    metrics: dict[str, Any]
    seconds: float

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        k = self.metrics["k"]
        lines = [
            f"version:   {self.version} (previous: {self.previous or 'none'})",
            f"artifact:  {self.path}",
            f"data:      {self.n_events} events, {self.n_items} items",
            f"evaluated: {self.metrics['users']} users, leave-last-out",
        ]
        for name in ("model", "popular"):
            scores = self.metrics[name]
            lines.append(
                f"  {name:<8} HR@{k} {scores[f'hr@{k}']:.4f}  NDCG@{k} "
                f"{scores[f'ndcg@{k}']:.4f}  MRR {scores['mrr']:.4f}"
            )
        lines.append(f"elapsed:   {self.seconds:.1f} s")
        return lines


def catalog_rows(
    catalog: dict[str, events_pb2.Item], events: EventLog
) -> tuple[list[str], list[str]]:
    """``(item_ids, texts)`` sorted by id: every catalog item and every item of the log.

    An item the catalog lacks uses its copy from the log, or its id as title.
    """
    ids = sorted(set(catalog) | set(events.item_ids))
    texts = []
    for item_id in ids:
        item = catalog.get(item_id) or events.items.get(item_id)
        if item is None:
            texts.append(item_id)
        else:
            texts.append(item_text(item.title or item_id, list(item.categories), item.description))
    return ids, texts


def run_once(
    settings: TrainingSettings,
    *,
    consumer: KafkaConsumer,
    producer: KafkaProducer,
    encoder: ItemEncoder,
    progress: bool = True,
) -> RunSummary:
    """Read, embed, evaluate, write, promote, announce."""
    started = time.monotonic()
    events = read_event_log(
        consumer,
        settings.topic_enriched,
        start_offsets=settings.start_offsets,
        max_events=settings.max_events,
        timeout_s=settings.read_timeout_s,
        progress=progress,
    )
    if len(events) == 0:
        raise EmptyLogError(
            f"no events in {settings.topic_enriched} (offset ranges {events.ranges}); "
            "replay some data through streams first"
        )
    catalog = read_catalog(
        consumer, settings.topic_items, timeout_s=settings.read_timeout_s, progress=progress
    )
    log.info("read %s events and %s catalog items", len(events), len(catalog))

    item_ids, texts = catalog_rows(catalog, events)
    vectors = encoder.encode(texts, batch_size=settings.encode_batch_size, progress=progress)

    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    held_out = leave_last_out(
        events.user_ids,
        np.asarray(events.timestamps_ms, dtype=np.int64),
        max_history=settings.eval_history,
        max_users=settings.eval_max_users,
    )
    metrics = evaluate(
        held_out,
        np.fromiter((row_of[item] for item in events.item_ids), dtype=np.int64, count=len(events)),
        np.asarray(events.weights, dtype=np.float32),
        vectors,
        k=settings.eval_k,
    )

    now = datetime.now(UTC)
    path = write_artifact(
        settings.artifact_dir,
        now=now,
        item_ids=item_ids,
        vectors=vectors,
        window=data_window(settings.topic_enriched, events.ranges),
        n_events=len(events),
        metrics=metrics,
        config=settings.model_dump(mode="json"),
    )
    pointer = promote(settings.artifact_dir, path.name, now)
    release = release_message(
        version=pointer.version,
        uri=str(path.resolve()),
        created_at_ms=int(now.timestamp() * 1000),
        previous_version=pointer.previous,
    )
    if settings.publish_item_vectors:
        publish_item_vectors(
            producer,
            settings.topic_item_vectors,
            version=pointer.version,
            item_ids=item_ids,
            vectors=vectors,
            updated_at_ms=int(now.timestamp() * 1000),
        )
    announce_release(producer, settings.topic_models, release)
    log.info("released %s (previous %s)", pointer.version, pointer.previous)
    return RunSummary(
        version=pointer.version,
        path=path,
        previous=pointer.previous,
        n_events=len(events),
        n_items=len(item_ids),
        metrics=metrics,
        seconds=time.monotonic() - started,
    )
