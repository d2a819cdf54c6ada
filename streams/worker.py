"""One place that builds everything a worker runs: model, catalog, Redis, services, app."""

from __future__ import annotations

import logging
from functools import partial

import faust
from mode import Service
from redis.asyncio import Redis

from contracts.online import RedisKeys
from contracts.security import async_redis_client
from streams.app import create_app
from streams.catalog import Catalog
from streams.feed import CatalogFeed
from streams.live import EncoderOptions, LiveModel, load_model, pretrained_dir
from streams.metrics import MetricsServer, StreamsMetrics
from streams.model import choose_model
from streams.online import Caps, OnlineState
from streams.releases import ModelReleases
from streams.settings import StreamsSettings
from streams.topics import TopicSetup, topic_specs
from streams.trending import windows_from_settings

log = logging.getLogger(__name__)


def online_state(settings: StreamsSettings, client: Redis) -> OnlineState:
    """The Redis writer with the settings' key prefix, caps, trending windows and retries."""
    return OnlineState(
        client,
        keys=RedisKeys(settings.redis_prefix),
        caps=Caps(seen=settings.history_length, acts=settings.acts_length,
                  purchases=settings.purchases_length, trending=settings.trending_size),
        trending=windows_from_settings(settings.trending_windows),
        group=settings.app_id,
        source_topic=settings.topic_events,
        retry_initial_s=settings.redis_retry_initial_s,
        retry_max_s=settings.redis_retry_max_s,
        user_ttl_s=settings.user_ttl_s,
    )


def build_worker(settings: StreamsSettings) -> faust.Worker:
    """Load the model once and wire every service; nothing connects before the worker starts."""
    pretrained = pretrained_dir(settings.model_dir)
    options = EncoderOptions(device=settings.device, bf16=settings.bf16,
                             half_life_ms=settings.decay_half_life_s * 1000.0)
    model = load_model(choose_model(settings.artifact_dir, pretrained), options)
    log.info("model version %s", model.version)
    live = LiveModel(model)
    catalog = Catalog(model_version=model.version, dim=model.dim)
    catalog.switch(model.version, model.dim, model.item_vectors)
    online = online_state(settings, async_redis_client(settings.redis_url, settings))
    metrics = StreamsMetrics()
    app = create_app(settings, catalog=catalog, live=live, online=online, metrics=metrics)
    servers = settings.bootstrap_servers()
    # Services start in this order, all before the app: topics exist before anything
    # subscribes, and the catalog is loaded before the first event is judged against it.
    extra: list[Service] = []
    if settings.metrics_port is not None:
        extra.append(MetricsServer(metrics, host=settings.metrics_host, port=settings.metrics_port))
    return faust.Worker(
        app,
        TopicSetup(topic_specs(settings), bootstrap=settings.kafka_bootstrap,
                   groups=(settings.events_group(), settings.app_id), security=settings),
        CatalogFeed(
            catalog,
            bootstrap_servers=servers,
            topic_items=settings.topic_items,
            topic_item_vectors=settings.topic_item_vectors,
            fetch_max_wait_ms=settings.catalog_fetch_max_wait_ms,
            max_item_bytes=settings.max_event_bytes,
            security=settings,
        ),
        online,
        ModelReleases(
            live, bootstrap_servers=servers, topic=settings.topic_models,
            pretrained_dir=pretrained, load=partial(load_model, options=options),
            security=settings,
        ),
        *extra,
        loglevel=settings.log_level,
    )
