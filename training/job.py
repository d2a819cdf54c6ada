"""One training run: log and catalog in, evaluated artifact out, promoted and announced.

`run_trained` fine-tunes the two-tower model and promotes it only past the gate;
`run_once` is the bootstrap run (pretrained text encoder, weighted-mean users, always
promoted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka.errors import KafkaError as AIOKafkaError
from kafka import KafkaConsumer, KafkaProducer

from contracts.artifact import (
    data_window,
    pretrained_item_encoder,
    promote,
    read_production,
    write_artifact,
)
from contracts.deletions import Deletions, read_deletions
from contracts.encoder import ItemEncoder, pretrained_model_dir
from contracts.itemtext import item_text
from protos import events_pb2
from training.announce import announce, publish_item_vectors, release_message
from training.data import Dataset, from_event_log
from training.distributed import SINGLE, World
from training.errors import EmptyLogError, LogReadError
from training.evaluate import evaluate, leave_last_out
from training.eventlog import EventLog, read_catalog, read_event_log
from training.export import export_model, item_vectors
from training.offline import TEXT_MAX_LENGTH, fit, pick_device, recipe, split_dataset
from training.promotion import artifact_scorer, passes_gate
from training.quality import evaluate_scorer, model_scorer
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

    An item the catalog lacks uses its copy from the log, or its id as its text.
    """
    ids = sorted(set(catalog) | set(events.item_ids))
    texts = []
    for item_id in ids:
        item = catalog.get(item_id) or events.items.get(item_id)
        if item is None:
            texts.append(item_id)
        else:
            texts.append(item_text(item))
    return ids, texts


def deleted_users(settings: TrainingSettings) -> Deletions:
    """Every deletion on ``deletions``, read whole (``contracts.deletions``); LogReadError
    when Kafka refuses."""
    try:
        return asyncio.run(read_deletions(settings.kafka_bootstrap, settings.topic_deletions,
                                          client_id="streamrec-training-deletions",
                                          security=settings))
    except AIOKafkaError as error:
        raise LogReadError(f"reading {settings.topic_deletions}: {error!r}") from error


def read_log_and_catalog(
    settings: TrainingSettings, consumer: KafkaConsumer, *, progress: bool
) -> tuple[EventLog, dict[str, events_pb2.Item]]:
    """The event log by the configured offsets without deleted users' earlier events, and
    the catalog; an empty log is an error."""
    events = read_event_log(
        consumer, settings.topic_enriched, start_offsets=settings.start_offsets,
        max_events=settings.max_events, timeout_s=settings.read_timeout_s, progress=progress,
        deletions=deleted_users(settings),
    )
    if len(events) == 0:
        raise EmptyLogError(
            f"no events in {settings.topic_enriched} (offset ranges {events.ranges}); "
            "replay some data through streams first"
        )
    catalog = read_catalog(
        consumer, settings.topic_items, timeout_s=settings.read_timeout_s, progress=progress
    )
    return events, catalog


def run_once(
    settings: TrainingSettings,
    *,
    consumer: KafkaConsumer,
    producer: KafkaProducer,
    encoder: ItemEncoder,
    progress: bool = True,
) -> RunSummary:
    """Read, embed, evaluate, write, promote, announce. The manifest names the encoder's
    token limit, so streams embeds new items as these were embedded."""
    started = time.monotonic()
    events, catalog = read_log_and_catalog(settings, consumer, progress=progress)
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
        write_encoders=lambda _: {"item_encoder": pretrained_item_encoder(encoder.max_length)},
        item_texts=texts,
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
    announce(producer, settings, release)
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


@dataclass(frozen=True)
class TrainedRunSummary:
    """What a fine-tuning run read, trained, measured and decided."""

    version: str
    path: Path
    promoted: bool
    production: str | None  # the production version after the run
    n_events: int
    n_items: int
    candidate: dict[str, float]
    current: dict[str, float] | None
    train_seconds: float
    seconds: float

    def lines(self) -> list[str]:
        def fmt(scores: dict[str, float]) -> str:
            return "  ".join(f"{k.upper()} {v:.4f}" for k, v in scores.items())

        return [
            f"version:    {self.version} ({'promoted' if self.promoted else 'not promoted'}; "
            f"production: {self.production or 'none'})",
            f"artifact:   {self.path}",
            f"data:       {self.n_events} events, {self.n_items} items",
            f"candidate:  {fmt(self.candidate)}",
            f"production: {fmt(self.current) if self.current else 'none'}",
            f"trained:    {self.train_seconds:.1f} s; elapsed {self.seconds:.1f} s",
        ]


@dataclass(frozen=True)
class TrainingData:
    """What a run trains on and what its artifact says about it: the main rank reads it
    and every rank trains on it."""

    dataset: Dataset
    ranges: dict[int, tuple[int, int]]  # the log's offsets read, per partition
    n_events: int


def run_trained(
    settings: TrainingSettings,
    *,
    consumer: KafkaConsumer | None,
    producer: KafkaProducer | None,
    progress: bool = True,
    world: World = SINGLE,
) -> TrainedRunSummary | None:
    """Read the log by offsets, fine-tune the two towers, evaluate the candidate and the
    current production on each user's newest event, write the candidate, and promote
    and announce it only when it passes the gate.

    With a distributed `world` (torchrun) every rank calls this: the main rank, the
    only one with Kafka clients (the others pass None), reads the log and the catalog
    and shares them; all ranks train; the main rank evaluates, writes, promotes and
    announces, the others return None once training is over."""
    started = time.monotonic()

    def read() -> TrainingData:
        if consumer is None:
            raise ValueError("the main rank of a run needs a Kafka consumer")
        events, catalog = read_log_and_catalog(settings, consumer, progress=progress)
        return TrainingData(dataset=from_event_log(events, catalog), ranges=dict(events.ranges),
                            n_events=len(events))

    data = world.share(read)
    dataset = data.dataset
    split = split_dataset(dataset)
    if len(split.eval_users) == 0:
        raise EmptyLogError("no user has 3 events yet: nothing to hold out and evaluate")
    rec = recipe("streamrec", len(dataset.item_ids), time_budget_s=settings.train_time_budget_s,
                 seed=settings.seed)
    rec = replace(rec, model=replace(rec.model, max_len=settings.max_len),
                  train=replace(rec.train, epochs=settings.max_epochs))
    device = pick_device(settings.device, world)
    fitted = fit(rec, dataset, split, text_model_dir=settings.model_dir or pretrained_model_dir(),
                 device=device, progress=progress, world=world)
    if not world.main:
        return None
    if producer is None:
        raise ValueError("the main rank of a run needs a Kafka producer")
    model, train_seconds = fitted.model, fitted.seconds

    # held out: every evaluated user's newest event, from everything before it
    users = split.eval_users[: settings.eval_max_users]
    ends = split.full.lengths()[users] - 1
    targets = split.test_targets[: settings.eval_max_users]
    # serving leaves out the user's recent items: the gate ranks like it
    candidate = evaluate_scorer(model_scorer(model, split.full, device), users, ends, targets,
                                seqs=split.full, desc="candidate",
                                progress=progress)["seen_excluded"]
    pointer = read_production(settings.artifact_dir)
    current = None
    if pointer is not None:
        scorer = artifact_scorer(settings.artifact_dir, pointer.version, dataset.item_ids,
                                 split.full, max_history=settings.eval_history)
        current = evaluate_scorer(scorer, users, ends, targets, seqs=split.full,
                                  desc="production", progress=progress)["seen_excluded"]
    promote_it = passes_gate(candidate, current, metric=settings.gate_metric,
                             min_gain=settings.gate_min_gain)

    now = datetime.now(UTC)
    vectors = item_vectors(model)
    path = write_artifact(
        settings.artifact_dir, now=now, item_ids=dataset.item_ids, vectors=vectors,
        window=data_window(settings.topic_enriched, data.ranges), n_events=data.n_events,
        metrics={"protocol": "leave_last_out_full_catalog_seen_excluded", "users": int(len(users)),
                 "candidate": candidate, "production": current,
                 "production_version": pointer.version if pointer else None,
                 "gate": {"metric": settings.gate_metric, "min_gain": settings.gate_min_gain,
                          "passed": promote_it},
                 "training": fitted.curve()},
        config={"model": model.cfg.to_dict(), "train": rec.train.to_dict(),
                "settings": settings.model_dump(mode="json")},
        write_encoders=lambda d: export_model(model, rec.train, d,
                                              text_max_length=TEXT_MAX_LENGTH),
        item_texts=dataset.item_texts,
    )
    production = pointer.version if pointer else None
    if promote_it:
        new = promote(settings.artifact_dir, path.name, now)
        if settings.publish_item_vectors:
            publish_item_vectors(producer, settings.topic_item_vectors, version=new.version,
                                 item_ids=dataset.item_ids, vectors=vectors,
                                 updated_at_ms=int(now.timestamp() * 1000))
        announce(producer, settings, release_message(
            version=new.version, uri=str(path.resolve()),
            created_at_ms=int(now.timestamp() * 1000), previous_version=new.previous))
        production = new.version
        log.info("promoted %s (previous %s)", new.version, new.previous)
    else:
        log.info("kept %s: candidate %s %.4f does not beat %.4f + %.4f", production,
                 settings.gate_metric, candidate[settings.gate_metric],
                 (current or {}).get(settings.gate_metric, 0.0), settings.gate_min_gain)
    return TrainedRunSummary(
        version=path.name, path=path, promoted=promote_it, production=production,
        n_events=data.n_events, n_items=len(dataset.item_ids), candidate=candidate,
        current=current, train_seconds=train_seconds, seconds=time.monotonic() - started,
    )
