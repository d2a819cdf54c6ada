"""Settings of the streams worker, read once from ``STREAMREC_STREAMS_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.events import MAX_EVENT_BYTES, MAX_FUTURE_SKEW_MS
from contracts.online import EVENT_TYPES
from contracts.encoder import EncoderChoice
from contracts.security import KafkaSecurity, RedisSecurity, is_cluster_url
from contracts.topics import (
    DEDUPE_CHANGELOG,
    DLQ,
    ENRICHED,
    EVENTS,
    ITEM_VECTORS,
    ITEMS,
    MODELS,
    RELATIONS,
    USERS_CHANGELOG,
    TopicLayout,
)
from contracts.relations import MAX_ID_CHARS, MAX_RELATION_BYTES
from contracts.social import (
    DEFAULT_FANOUT_THRESHOLD,
    DEFAULT_FEED_CAP,
    DEFAULT_TAU_S,
    DEFAULT_TYPE_WEIGHTS,
    type_weights,
)
from streams.pending import VectorMode
from streams.trending import windows_from_settings

DEFAULT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 3.0,
    "purchase": 5.0,
    "rating": 1.0,
}


class StreamsSettings(BaseSettings, TopicLayout, KafkaSecurity, RedisSecurity, EncoderChoice):
    """Topics, stores, limits and tuning of one Faust worker (``topic_partitions``,
    ``topic_replication`` and ``log_retention_ms``: see :class:`TopicLayout`)."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_STREAMS_", extra="forbid")

    # Where things live.
    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sr:"
    topic_events: str = EVENTS.default_name
    topic_enriched: str = ENRICHED.default_name
    topic_dlq: str = DLQ.default_name
    topic_items: str = ITEMS.default_name
    topic_item_vectors: str = ITEM_VECTORS.default_name
    topic_models: str = MODELS.default_name
    topic_relations: str = Field(default=RELATIONS.default_name, min_length=1,
                                 description="edges; a deleted user's get tombstones")
    artifact_dir: Path = Path("var/artifacts")

    # The Faust application.
    app_id: str = Field(
        default="streamrec-streams",
        min_length=1,
        description="Faust app id: consumer group and prefix of its internal topics",
    )
    datadir: Path = Path("var/streams")
    web_enabled: bool = False
    web_port: int = Field(default=6066, ge=0, le=65535)
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Prometheus /metrics port; None: not served; 0: any free port (logged)",
    )
    metrics_host: str = "0.0.0.0"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Freshness: aiokafka waits up to this long for data before answering a fetch,
    # and one in-flight fetch per broker blocks the next (Faust hard-codes 1500 ms).
    consumer_fetch_max_wait_ms: int = Field(default=10, ge=0, le=5000)
    catalog_fetch_max_wait_ms: int = Field(
        default=100, ge=0, le=5000,
        description="fetch wait of the catalog reader; the owning worker's own items skip it",
    )
    producer_linger_ms: float = Field(
        default=10.0, ge=0, le=1000,
        description="how long Faust's producer (item vectors, dead letters of items) gathers "
        "records per request; the events path sends whole record batches without a linger",
    )

    # A worker that dies without leaving its consumer group holds its partitions until this
    # passes without a heartbeat (Faust's default, 60 s, stalls every restart after a crash).
    session_timeout_s: float = Field(
        default=10.0, ge=6, le=300,
        description="consumer group session timeout; the broker's group.min.session.timeout.ms "
        "(6 s by default) is the floor",
    )

    # Delivery: outputs of events and their offsets are committed in Kafka transactions.
    commit_interval_s: float = Field(
        default=0.1, gt=0, le=60,
        description="how often the outputs of events are committed; read_committed readers "
        "see them this much later, and a crash makes the worker read this much again",
    )
    transaction_timeout_s: float = Field(
        default=30.0, ge=1, le=900,
        description="the broker aborts a transaction left open this long by a dead worker "
        "no other worker took over from",
    )

    # Input limits (dead-letter reasons oversized and bad_timestamp); serving's TrackEvents
    # applies its own copies of them at the door, with the same defaults (contracts.events).
    max_event_bytes: int = Field(default=MAX_EVENT_BYTES, ge=64, le=16 * 1024 * 1024)
    max_future_skew_ms: int = Field(default=MAX_FUTURE_SKEW_MS, ge=0)

    # Events are handled in batches: one Redis transaction, one user-encoder call and one
    # state record per user per batch. A batch is what has arrived, up to the size: a
    # backlog goes in large batches, a trickle one event at a time.
    event_batch_size: int = Field(default=2000, ge=1, le=100_000)
    event_batch_within_s: float = Field(
        default=0.1, gt=0, le=10,
        description="longest a read of events waits when none has arrived (it returns as "
        "soon as one does)",
    )

    # User vectors (streams.pending): made with their batch, or by a loop of their own
    # that writes the batch's online state first and coalesces a user's events into one
    # encoder pass.
    user_vectors: VectorMode = Field(
        default="auto",
        description="inline: a batch's user vectors are written with its events (an "
        "enriched event's vector is in Redis); deferred: right after, by a loop of their "
        "own (the seen set, history and counters are written at once, the vector follows "
        "within a pass); auto: deferred for a trained user tower, inline for the weighted "
        "mean of base",
    )
    user_vector_batch_max: int = Field(default=1024, ge=1, le=100_000,
                                       description="users per deferred encoder pass")
    user_vector_within_s: float = Field(
        default=0.002, ge=0, le=1,
        description="a deferred pass waits this long after its first user for others",
    )

    tower_process: bool = Field(
        default=False,
        description="run a trained CPU user tower's passes in a process of its own, beside "
        "the event loop: on the loop a pass holds up the batches behind it for its whole "
        "length; there the loop only pads the inputs and awaits the vectors",
    )
    torch_threads: int = Field(
        default=1, ge=0, le=256,
        description="intra-op threads of the item and user encoders (torch.set_num_threads; "
        "0: torch's default, one per core). A worker shares its cores with its event loop, "
        "Kafka and Redis clients (and here the brokers): an encoder call spread over "
        "threads waits at every operator for a core another process holds (3 users' tower "
        "call: 8 ms on one thread; on two with one core busy, p90 133 ms)",
    )

    # User state.
    history_length: int = Field(default=50, ge=1, le=10_000)
    dedupe_window: int = Field(
        default=100, ge=1, le=100_000,
        description="recent event ids (with their offsets) kept in each user's state",
    )
    dedupe_window_s: float = Field(
        default=7 * 24 * 3600.0, ge=60, le=100 * 365 * 24 * 3600.0,
        description="event time for which a re-sent event id is a duplicate, however many "
        "events came since; an event older than this before its partition's newest "
        "accepted event time is dead-lettered too_old (about 12 bytes of memory per id)",
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="interaction weight per event type (lower-case EventType names); "
        "a rating with a positive value weighs weights.rating * value",
    )
    acts_length: int = Field(
        default=100, ge=1, le=100_000,
        description="items kept per user and event type in Redis acts:{type}:{user}",
    )
    purchases_length: int = Field(
        default=1000, ge=1, le=1_000_000,
        description="items kept per user in acts:purchase:{user} (exclusion of bought items)",
    )
    user_ttl_s: int = Field(
        default=90 * 24 * 3600, ge=0, le=100 * 365 * 24 * 3600,
        description="a user's online state in Redis (uv, seen, acts:{type}, social) expires "
        "this long after the last batch in which they acted; 0: never",
    )
    trending_windows: dict[str, float] = Field(
        default_factory=lambda: {"1h": 3600.0, "24h": 86400.0},
        description="trending window name -> decay time constant in seconds; "
        "Redis trending:{name}",
    )
    trending_size: int = Field(
        default=10_000, ge=1, le=10_000_000, description="items kept per trending window"
    )
    # Users whose events came before their items' vectors, re-embedded once they exist;
    # past the bound, the next vectors to arrive make the worker re-embed all its users.
    waiting_users_max: int = Field(default=100_000, ge=1, le=10_000_000,
                                   description="users held as waiting for item vectors")
    waiting_check_interval_s: float = Field(default=0.5, gt=0, le=60,
                                            description="how often arrived vectors are checked")
    decay_half_life_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="an interaction this much older than the newest counts half",
    )

    # Item encoder.
    item_batch_size: int = Field(default=64, ge=1, le=4096)
    item_batch_within_s: float = Field(
        default=0.05, gt=0, le=10, description="longest wait to fill an item batch"
    )

    # The social graph: edges from relations, acts fanned out into followers' feeds.
    relations_enabled: bool = Field(
        default=True,
        description="read relations into the graph in Redis (false: another deployment "
        "does; acts are still fanned out over the graph Redis holds)",
    )
    fanout_threshold: int = Field(
        default=DEFAULT_FANOUT_THRESHOLD, ge=0, le=100_000_000,
        description="an account with more followers is hot: its acts are read on demand "
        "by its followers' requests (fan-in) instead of written into their feeds; it stops "
        "being hot at nine tenths of this",
    )
    social_feed_cap: int = Field(default=DEFAULT_FEED_CAP, ge=1, le=100_000,
                                 description="members kept in a user's social feed")
    social_tau_s: float = Field(default=DEFAULT_TAU_S, gt=0,
                                description="decay time constant of a social act's weight")
    social_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS),
        description="event type name -> weight of the act in followers' feeds; a type left "
        "out is not fanned out",
    )
    social_backfill: int = Field(
        default=20, ge=0, le=1000,
        description="a new follow of an account that is not hot copies this many of its "
        "newest acts of each weighted type into the follower's feed (0: none)",
    )
    max_relation_bytes: int = Field(default=MAX_RELATION_BYTES, ge=64, le=16 * 1024 * 1024,
                                    description="size limit of one relations record value")
    max_relation_id_chars: int = Field(default=MAX_ID_CHARS, ge=1, le=1_000_000,
                                       description="length limit of a follower or followee id")

    # Redis retries: exponential backoff, never giving up on an event.
    redis_retry_initial_s: float = Field(default=0.1, gt=0)
    redis_retry_max_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _commit_within_timeout(self) -> StreamsSettings:
        if self.commit_interval_s * 2 > self.transaction_timeout_s:
            raise ValueError(
                f"commit_interval_s ({self.commit_interval_s}) must be at most half of "
                f"transaction_timeout_s ({self.transaction_timeout_s})"
            )
        return self

    @field_validator("weights")
    @classmethod
    def _known_types(cls, weights: dict[str, float]) -> dict[str, float]:
        known = set(EVENT_TYPES)
        unknown = set(weights) - known
        if unknown:
            raise ValueError(f"unknown event types {sorted(unknown)}; known: {sorted(known)}")
        missing = known - set(weights)
        if missing:
            raise ValueError(f"weights missing for {sorted(missing)}")
        if any(weight <= 0 for weight in weights.values()):
            raise ValueError("weights must be positive")
        return weights

    @field_validator("social_weights")
    @classmethod
    def _social_types(cls, weights: dict[str, float]) -> dict[str, float]:
        type_weights(weights)  # raises ValueError with the reason
        return weights

    @field_validator("trending_windows")
    @classmethod
    def _window_names(cls, windows: dict[str, float]) -> dict[str, float]:
        windows_from_settings(windows)  # raises ValueError with the reason
        return windows

    def events_group(self) -> str:
        """The consumer group of the events processor (offsets committed in its
        transactions); Faust's own group, ``app_id``, has the items agent."""
        return f"{self.app_id}-events"

    def relations_group(self) -> str:
        """The consumer group of the relations reader (offsets committed in its
        transactions; its applied offsets in Redis are ``applied:{group}``)."""
        return f"{self.app_id}-relations"

    def users_changelog(self) -> str:
        """The compacted topic of user states, partitioned like the events topic."""
        return USERS_CHANGELOG.default_name.format(app_id=self.app_id)

    def dedupe_changelog(self) -> str:
        """The compacted topic of remembered event ids, partitioned like the events topic."""
        return DEDUPE_CHANGELOG.default_name.format(app_id=self.app_id)

    def bootstrap_servers(self) -> list[str]:
        """The bootstrap list as ``host:port`` strings."""
        return [server.strip() for server in self.kafka_bootstrap.split(",") if server.strip()]
