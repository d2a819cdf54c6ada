"""streams.app and streams.transport: the app is wired from settings without connecting."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from contracts.encoder import ItemEncoder
from streams.app import create_app, faust_config
from streams.catalog import Catalog
from streams.events.partitions import EventsConsumer
from streams.live import LiveModel, LoadedModel
from streams.metrics import StreamsMetrics
from streams.settings import StreamsSettings
from streams.transport import ShortFetchTransport
from streams.userencoder import WeightedMean
from streams.worker import online_state


def build(settings: StreamsSettings, encoder: ItemEncoder):  # type: ignore[no-untyped-def]
    online = online_state(settings, Redis.from_url(settings.redis_url))
    catalog = Catalog(model_version="base", dim=encoder.dim)
    live = LiveModel(LoadedModel("base", encoder, WeightedMean(3_600_000.0), {}))
    return create_app(settings, catalog=catalog, live=live, online=online,
                      metrics=StreamsMetrics())


def test_faust_config_uses_raw_bytes_and_settings(tmp_path: Path) -> None:
    settings = StreamsSettings(kafka_bootstrap="h1:9092,h2:9093", datadir=tmp_path,
                               topic_partitions=3, producer_linger_ms=2.0)
    config = faust_config(settings)
    assert config["broker"] == ["kafka://h1:9092", "kafka://h2:9093"]
    assert (config["key_serializer"], config["value_serializer"]) == ("raw", "raw")
    assert config["topic_partitions"] == 3
    assert config["producer_linger"] == 0.002


async def test_app_has_the_items_agent_the_events_processor_and_short_fetch_consumer(
    tmp_path: Path, encoder: ItemEncoder
) -> None:
    settings = StreamsSettings(app_id="test-streams-app", datadir=tmp_path, topic_events="ev-x",
                               topic_items="it-x", consumer_fetch_max_wait_ms=7)
    app = build(settings, encoder)
    assert isinstance(app.transport, ShortFetchTransport)
    # Faust's agents read items only; events go through the processor's own group.
    topics = {agent.channel.get_topic_name() for agent in app.agents.values()}
    assert topics == {"it-x"}
    assert not app.tables
    (processor,) = [s for s in app._children if isinstance(s, EventsConsumer)]
    assert (processor.topic, processor.group) == ("ev-x", "test-streams-app-events")
    assert processor.assignment() == set()  # nothing connects before the worker starts
    # The worker's aiokafka consumer of items is built (not started) with the configured wait.
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == 7
    assert app.transport.gap_checked == frozenset({"it-x"})
