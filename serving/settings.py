"""Settings of the gRPC server, read once from ``STREAMREC_SERVING_*`` variables."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contracts.events import MAX_EVENT_BYTES, MAX_FUTURE_SKEW_MS
from contracts.online import EVENT_TYPES
from contracts.relations import MAX_RELATION_BYTES
from contracts.security import KafkaSecurity, RedisSecurity
from contracts.social import (
    DEFAULT_SOCIAL_WEIGHT,
    DEFAULT_TAU_S,
    DEFAULT_TYPE_WEIGHTS,
    SocialReadLimits,
    type_weights,
)
from contracts.topics import (
    DELETIONS,
    DLQ,
    ENRICHED,
    EVENTS,
    ITEM_VECTORS,
    ITEMS,
    RECOMMENDATIONS,
    RELATIONS,
    ROUTING,
    USERS_CHANGELOG,
    TopicLayout,
)

_WINDOW_LENGTH = re.compile(r"^([0-9]+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def window_seconds(name: str) -> float | None:
    """The length a window name like ``24h`` says, in seconds; None if it says none."""
    match = _WINDOW_LENGTH.match(name)
    if match is None or int(match[1]) == 0:
        return None
    return float(int(match[1]) * _UNIT_S[match[2]])


class ServingSettings(BaseSettings, TopicLayout, KafkaSecurity, RedisSecurity):
    """Where the stores are, where to listen, request limits and tuning (``topic_partitions``,
    ``topic_replication``, ``log_retention_ms``: how the topics serving writes are created)."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_SERVING_", extra="forbid")

    # Where things live.
    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sr:"
    topic_events: str = EVENTS.default_name
    topic_items: str = ITEMS.default_name
    topic_item_vectors: str = ITEM_VECTORS.default_name
    topic_routing: str = Field(default=ROUTING.default_name, min_length=1,
                               description="routing records (compacted, one partition; created if missing)")
    topic_recommendations: str = RECOMMENDATIONS.default_name
    topic_enriched: str = Field(default=ENRICHED.default_name,
                                description="read by `serving.cli.report` and `admin export-user`")
    topic_dlq: str = Field(default=DLQ.default_name, description="read by `admin export-user`")
    streams_app_id: str = Field(
        default="streamrec-streams", min_length=1,
        description="the streams worker's app id, whose users changelog `admin export-user` reads",
    )
    topic_relations: str = Field(default=RELATIONS.default_name, min_length=1,
                                 description="TrackRelations' edges (compacted; created if missing)")
    topic_deletions: str = Field(default=DELETIONS.default_name, min_length=1,
                                 description="DeleteUser's requests (compacted; created if missing)")
    artifact_dir: Path = Path("var/artifacts")

    # The server.
    host: str = Field(default="127.0.0.1", min_length=1, description="address to bind")
    port: int = Field(default=50051, ge=0, le=65535, description="0: any free port")
    grace_s: float = Field(default=5.0, ge=0, le=300, description="in-flight calls finish within this")
    shutdown_delay_s: float = Field(
        default=1.0, ge=0, le=300,
        description="after SIGTERM, NOT_SERVING yet still answering this long before the port closes: "
                    "clients watching health (the service config's healthCheckConfig) move their calls away",
    )
    max_receive_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    admin_host: str = Field(default="127.0.0.1", min_length=1, description="admin port address")
    admin_port: int | None = Field(default=50052, ge=0, le=65535, description="None: no admin port")
    admin_socket: Path | None = Field(
        default=None, description="serve Admin on this Unix socket instead of admin_host:admin_port"
    )
    max_connection_age_s: float | None = Field(
        default=300.0, gt=0, le=86_400,
        description="a client connection is closed (GOAWAY) after this and reconnects: new "
                    "connections spread over workers and replicas again; None: never",
    )
    reuse_port: bool = Field(
        default=False, description="SO_REUSEPORT on the public port (set for each of `workers`)"
    )
    stop_with_parent: bool = Field(
        default=False, description="exit (SIGTERM) when the parent process dies (set for each of `workers`)"
    )
    workers: int = Field(
        default=1, ge=1, le=64,
        description="server processes sharing the public port (SO_REUSEPORT), each following the routing",
    )
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus /metrics")
    metrics_host: str = "127.0.0.1"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    auth_tokens: list[SecretStr] = Field(
        default_factory=list, description="bearer tokens accepted on the public port; empty: none asked"
    )

    # Request limits (INVALID_ARGUMENT beyond them).
    max_k: int = Field(default=100, ge=1, le=10_000)
    max_exclude: int = Field(default=1000, ge=0, le=100_000, description="exclude_item_ids per call")
    max_categories: int = Field(default=100, ge=0, le=10_000, description="category filters per call")
    max_id_chars: int = Field(default=1024, ge=1, le=65_536, description="user and item id length")
    max_track_events: int = Field(default=1000, ge=1, le=100_000, description="events per TrackEvents")
    max_batch: int = Field(default=100, ge=1, le=10_000, description="requests per RecommendBatch")
    # TrackEvents refuses what streams would dead-letter: keep these at most the streams
    # worker's STREAMREC_STREAMS_MAX_EVENT_BYTES and _MAX_FUTURE_SKEW_MS (same defaults).
    max_event_bytes: int = Field(
        default=MAX_EVENT_BYTES, ge=64, le=16 * 1024 * 1024, description="serialized size of one tracked Event"
    )
    max_future_skew_ms: int = Field(
        default=MAX_FUTURE_SKEW_MS, ge=0, description="how far ahead of the server's clock a tracked event may be"
    )
    max_track_relations: int = Field(
        default=1000, ge=1, le=100_000, description="relations per TrackRelations"
    )
    max_relation_bytes: int = Field(
        default=MAX_RELATION_BYTES, ge=64, le=1024 * 1024, description="serialized size of one tracked Relation"
    )

    # Vectors: the dimension when no artifact names one.
    dim: int = Field(default=384, ge=1, le=65_536)
    index_cache_dir: Path | None = Field(
        default=None,
        description="built IVF indexes kept here by content hash: restarts and workers skip the build",
    )

    # Candidate generation.
    faiss_threads: int = Field(
        default=1, ge=1, le=256,
        description="OpenMP threads of FAISS; one query per search gains nothing from more",
    )
    seen_limit: int = Field(
        default=500, ge=0, le=100_000, description="most recent seen items read for exclusion"
    )
    candidate_margin: int = Field(
        default=20, ge=0, le=10_000, description="extra neighbours fetched beyond k + exclusions"
    )
    max_candidates: int = Field(
        default=5000, ge=1, le=1_000_000, description="widest neighbour or popular window searched"
    )
    exclude_seen: bool = Field(
        default=True, description="leave out items the user interacted with, unless a request asks"
    )
    exclude_event_types: list[str] = Field(
        default_factory=lambda: list(EVENT_TYPES),
        description="event types whose items are not shown again (sr:acts:{type}; all of them: sr:seen too)",
    )
    trending_window: str = Field(
        default="24h", pattern=r"^[A-Za-z0-9]*$",
        description="sr:trending:{window} ranks cold-start and backfill items; empty: sr:popular",
    )
    trending_tau_s: float | None = Field(
        default=None, gt=0,
        description="decay time constant of trending_window, the streams worker's "
        "trending_windows[window] (turns its scores into counts); None: read from a name "
        "like 24h, 90m, 7d, 3600s",
    )
    recent_items: int = Field(
        default=20, ge=1, le=1000,
        description="newest seen items that explain results and stand in for a user vector of another version",
    )
    ivf_threshold: int = Field(
        default=50_000, ge=1, description="catalog size from which the index is IVF, not exact"
    )
    index_memory_mb: float | None = Field(
        default=2048, gt=0,
        description="most memory an IVF index's vectors may take stored whole, per worker; a "
        "larger catalog is stored as half-precision floats (ivf-fp16), or as 8-bit codes "
        "(ivf-sq8, a quarter) when those do not fit either; None: always whole",
    )
    nprobe: int = Field(
        default=0, ge=0, le=65_536,
        description="IVF lists searched per query (of 4·√N). 0: by catalog size, 32 up to 1M "
        "items and then as measured for recall@10 >= 0.95 on 64-d vectors (256 at 10M: "
        "serving.index.auto_nprobe; bench/README.md, Index layouts at 10M items)",
    )
    # The social candidate source (contracts/social.py). tau and the type weights must be
    # those the streams worker writes the social feeds with (the same defaults).
    social_weight: float = Field(
        default=DEFAULT_SOCIAL_WEIGHT, ge=0, le=1000,
        description="weight of the social ranking against the model's (rank fusion); 0: the "
                    "source is off server-wide (no read, no social proof)",
    )
    social_tau_s: float = Field(
        default=DEFAULT_TAU_S, gt=0, description="decay time constant of a social act's weight"
    )
    social_type_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS),
        description="event type -> weight of a followee's act of that type (JSON); a type "
                    "left out is not a social signal",
    )
    social_feed_limit: int = Field(
        default=SocialReadLimits().feed, ge=0, le=100_000,
        description="social feed entries read per request, strongest first",
    )
    social_hot_followees: int = Field(
        default=SocialReadLimits().hot_followees, ge=0, le=10_000,
        description="accounts above the fan-out threshold read on demand per request",
    )
    social_per_type: int = Field(
        default=SocialReadLimits().per_type, ge=0, le=10_000,
        description="newest acts of each type read per hot followee",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop", description="the server's event loop: uvloop (libuv) or the standard one"
    )
    search_in_thread: bool = Field(
        default=False, description="run FAISS searches in a worker thread (the GIL is released)"
    )
    log_queue: int = Field(default=10_000, ge=1, description="served recommendations queued for Kafka")
    log_linger_ms: int = Field(
        default=50, ge=0, le=10_000, description="how long the recommendation log batches before sending"
    )

    # Stores: timeouts and retries.
    redis_timeout_s: float = Field(default=0.5, gt=0, le=60)
    # Off by default: the gRPC server hands the loop one new call per turn, so batches are
    # nearly always of one, and batching them costs a future, a task and two loop turns
    # per call (bench/serving.py at 100k items: 1.04 vs 1.20 ms server CPU per Recommend).
    redis_coalesce: bool = Field(
        default=False, description="concurrent requests' user reads share one Redis call"
    )
    search_coalesce: bool = Field(
        default=False, description="concurrent requests' index searches share one FAISS call"
    )
    deletion_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="DeleteUser waits this long for its Kafka commit"
    )
    deletion_transactional_id: str | None = Field(
        default=None, min_length=1,
        description="DeleteUser's transactional producer id; default {client_id}-deletions-{host}-{port}",
    )
    track_timeout_s: float = Field(
        default=10.0, gt=0, le=300,
        description="all events of a TrackEvents call (relations of a TrackRelations call) acked within this",
    )
    kafka_fetch_max_wait_ms: int = Field(default=10, ge=0, le=5000, description="feed freshness")
    kafka_retry_s: float = Field(default=2.0, gt=0, le=300, description="wait before a feed reconnects")
    topic_poll_s: float = Field(default=1.0, gt=0, le=300, description="how often a missing topic is looked for")
    client_id: str = Field(default="streamrec-serving", min_length=1)

    @field_validator("social_type_weights", mode="before")
    @classmethod
    def _weights_from_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str | bytes) else value

    @field_serializer("social_type_weights")
    def _weights_as_json(self, value: dict[str, float]) -> str:
        """Dumped as the JSON its environment variable holds (and read back from it)."""
        return json.dumps(value)

    @model_validator(mode="after")
    def _windows(self) -> ServingSettings:
        unknown = set(self.exclude_event_types) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"exclude_event_types: unknown {sorted(unknown)}, known {list(EVENT_TYPES)}")
        if self.trending_window and self.trending_tau_s is None:
            self.trending_tau_s = window_seconds(self.trending_window)
            if self.trending_tau_s is None:
                raise ValueError(f"trending_tau_s is required: the window name "
                                 f"{self.trending_window!r} does not say its length")
        try:
            type_weights(self.social_type_weights)
        except ValueError as error:
            raise ValueError(f"social_type_weights: {error}") from error
        if self.social_weight > 0 and not self.social_type_weights:
            raise ValueError("social_type_weights is empty: name a type, or set social_weight 0")
        if self.max_candidates < self.max_k:
            raise ValueError("max_candidates must be at least max_k")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    def users_changelog(self) -> str:
        """The streams worker's compacted topic of user states (partitioned like events)."""
        return USERS_CHANGELOG.default_name.format(app_id=self.streams_app_id)

    def bootstrap_servers(self) -> list[str]:
        """The bootstrap list as ``host:port`` strings."""
        return [server.strip() for server in self.kafka_bootstrap.split(",") if server.strip()]
