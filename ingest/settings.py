"""Settings of the ingest tool, read once from ``STREAMREC_INGEST_*`` variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.relations import MAX_ID_CHARS, MAX_RELATION_BYTES
from contracts.security import KafkaSecurity
from contracts.topics import EVENTS, ITEMS, RELATIONS, TopicLayout


class IngestSettings(BaseSettings, TopicLayout, KafkaSecurity):
    """Where replayed data goes and how the producer batches it (``topic_partitions`` and
    ``topic_replication``: how ingest creates the topics it writes when they are missing)."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_INGEST_", extra="forbid")

    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_events: str = EVENTS.default_name
    topic_items: str = ITEMS.default_name
    topic_relations: str = Field(default=RELATIONS.default_name, min_length=1,
                                 description="edges of `relations` (compacted)")
    client_id: str = "streamrec-ingest"
    max_batch_bytes: int = Field(
        default=1_048_576, ge=1024, description="records go out in batches up to this size"
    )
    acks: Literal["all", "1", "0"] = "all"
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    max_id_chars: int = Field(
        default=MAX_ID_CHARS, ge=1, le=65_536, description="follower and followee id length of a relation"
    )
    max_relation_bytes: int = Field(
        default=MAX_RELATION_BYTES, ge=64, le=1024 * 1024, description="serialized size of one Relation"
    )
