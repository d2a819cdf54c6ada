"""streams.app and streams.transport: the app is wired from settings without connecting."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from streams.app import create_app, faust_config
from streams.catalog import Catalog
from streams.encoder import ItemEncoder
from streams.online import OnlineState, RedisKeys
from streams.settings import StreamsSettings
from streams.transport import ShortFetchTransport


def build(settings: StreamsSettings, encoder: ItemEncoder):  # type: ignore[no-untyped-def]
    online = OnlineState(
        Redis.from_url(settings.redis_url), keys=RedisKeys(settings.redis_prefix),
        group=settings.app_id, source_topic=settings.topic_events, seen_length=settings.history_length, retry_initial_s=0.1, retry_max_s=1.0,
    )
    catalog = Catalog(model_version="base", dim=encoder.dim)
    return create_app(settings, catalog=catalog, encoder=encoder, online=online)


def test_faust_config_uses_raw_bytes_and_settings(tmp_path: Path) -> None:
    settings = StreamsSettings(kafka_bootstrap="h1:9092,h2:9093", datadir=tmp_path,
                               topic_partitions=3, producer_linger_ms=2.0)
    config = faust_config(settings)
    assert config["broker"] == ["kafka://h1:9092", "kafka://h2:9093"]
    assert (config["key_serializer"], config["value_serializer"]) == ("raw", "raw")
    assert config["topic_partitions"] == 3
    assert config["producer_linger"] == 0.002


async def test_app_has_agents_table_and_short_fetch_consumer(
    tmp_path: Path, encoder: ItemEncoder
) -> None:
    settings = StreamsSettings(app_id="test-streams-app", datadir=tmp_path, topic_events="ev-x",
                               topic_items="it-x", consumer_fetch_max_wait_ms=7)
    app = build(settings, encoder)
    assert isinstance(app.transport, ShortFetchTransport)
    topics = {agent.channel.get_topic_name() for agent in app.agents.values()}
    assert topics == {"ev-x", "it-x"}
    table = app.tables["users"]
    assert table.partitions == settings.topic_partitions
    # The worker's aiokafka consumer is built (not started) with the configured wait.
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == 7
    # Offsets of events are committed by the worker's transactions, not by Faust.
    assert app.transport.committed_elsewhere == frozenset({"ev-x"})
