"""The console's settings, read once at start (env prefix ``STREAMREC_CONSOLE_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.security import KafkaSecurity, RedisSecurity
from contracts.topics import DLQ, ENRICHED, ITEMS, RECOMMENDATIONS


class ConsoleSettings(BaseSettings, KafkaSecurity, RedisSecurity):
    """Where the console listens and where it finds each deployable's public face."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_CONSOLE_", extra="forbid")

    # The page.
    host: str = Field(default="127.0.0.1", min_length=1, description="address to bind (loopback)")
    port: int = Field(default=8070, ge=0, le=65535, description="0: any free port (logged)")
    token: SecretStr | None = Field(
        default=None, description="asked of every visitor (a login form sets a cookie); None: none asked")

    # serving: the public gRPC port, its Admin port and its metrics.
    serving_target: str = Field(default="127.0.0.1:50051", min_length=1)
    serving_token: SecretStr | None = Field(
        default=None, description="bearer token for the public port, when serving asks for one")
    admin_target: str = Field(default="127.0.0.1:50052", min_length=1, description="serving's Admin port")
    serving_metrics_url: str | None = Field(
        default="http://127.0.0.1:9101/metrics",
        description="serving's /metrics (its STREAMREC_SERVING_METRICS_PORT; worker 0's with "
                    "several workers); None: not shown")
    streams_metrics_url: str | None = Field(
        default="http://127.0.0.1:9100/metrics",
        description="the streams worker's /metrics (its STREAMREC_STREAMS_METRICS_PORT); None: not shown")
    grpc_deadline_s: float = Field(default=10.0, gt=0, le=600)

    # Samples of the metrics kept for the charts.
    sample_interval_s: float = Field(default=5.0, gt=0, le=3600)
    history_points: int = Field(default=120, ge=2, le=100_000, description="samples kept per chart")

    # Kafka (dead letters), Redis (a user's recent items) and the artifact store.
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_dlq: str = DLQ.default_name
    topic_items: str = Field(default=ITEMS.default_name, description="the catalog (compacted)")
    topic_recommendations: str = Field(default=RECOMMENDATIONS.default_name,
                                       description="serving's log of what each version served")
    topic_enriched: str = Field(default=ENRICHED.default_name,
                                description="the event log: clicks and purchases on recommendations")
    streams_app_id: str = Field(
        default="streamrec-streams", min_length=1,
        description="the streams worker's app id: names the re-drive progress groups")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sr:"
    artifact_dir: Path = Path("var/artifacts")
    dead_letter_examples: int = Field(default=3, ge=0, le=100, description="examples per reason")
