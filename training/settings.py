"""Settings of the training job, read once from ``STREAMREC_TRAINING_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.itemtext import MAX_TOKENS
from contracts.encoder import EncoderChoice
from contracts.security import KafkaSecurity
from contracts.topics import DELETIONS, ENRICHED, ITEM_VECTORS, ITEMS, MODELS, ROUTING, TopicLayout


class TrainingSettings(BaseSettings, TopicLayout, KafkaSecurity, EncoderChoice):
    """Inputs, outputs and limits of one training run (``topic_partitions``,
    ``topic_replication``, ``log_retention_ms``: how the topics it writes are created)."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_TRAINING_", extra="forbid")

    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_enriched: str = ENRICHED.default_name
    topic_items: str = ITEMS.default_name
    topic_models: str = MODELS.default_name
    topic_routing: str = Field(default=ROUTING.default_name, description="serving's routing: a release makes its version production")
    topic_item_vectors: str = ITEM_VECTORS.default_name
    topic_deletions: str = Field(default=DELETIONS.default_name, min_length=1,
                                 description="deleted users: their earlier events are left out")
    artifact_dir: Path = Path("var/artifacts")

    max_events: int = Field(
        default=5_000_000, ge=1, description="read at most the newest N events of the log"
    )
    start_offsets: dict[int, int] = Field(
        default_factory=dict, description="first offset per partition; default: the beginning"
    )
    read_timeout_s: float = Field(
        default=60.0, gt=0, description="give up when a read makes no progress this long"
    )

    encode_batch_size: int = Field(default=256, ge=1, le=4096)
    max_length: int = Field(default=MAX_TOKENS, ge=8, le=512,
                            description="tokens per item text of the pretrained run")

    eval_k: int = Field(default=10, ge=1, le=1000)
    eval_history: int = Field(
        default=50, ge=1, description="newest history events folded into a user vector"
    )
    eval_max_users: int = Field(default=100_000, ge=1)

    trainer: Literal["finetune", "pretrained"] = Field(
        default="finetune",
        description="finetune: train the two towers, promote past the gate; "
        "pretrained: embed with the pretrained encoder and always promote",
    )
    train_time_budget_s: float = Field(
        default=1800.0, gt=0,
        description="wall seconds of a training run: text cache, training and its refresh "
        "(30 minutes: the in-budget figure of bench/README.md is measured with it)")
    max_epochs: int = Field(default=200, ge=1)
    max_len: int = Field(default=200, ge=2, le=1024, description="user history length L")
    seed: int = 0
    gate_metric: Literal["hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr"] = "ndcg@10"
    gate_min_gain: float = Field(
        default=0.0, description="promote when candidate > production + this (absolute)"
    )

    schedule_interval_s: float | None = Field(
        default=86_400.0, gt=0, description="schedule: run this long after the last success"
    )
    schedule_min_new_events: int | None = Field(
        default=None, ge=1, description="schedule: run once this many events are new"
    )
    schedule_poll_s: float = Field(default=60.0, gt=0)
    schedule_retry_s: float = Field(default=300.0, gt=0, description="after a failed run")

    publish_item_vectors: bool = Field(
        default=False, description="also produce the new version's item vectors to item-vectors"
    )
