"""One place that builds everything a worker runs: model, catalog, Redis, services, app."""

from __future__ import annotations

import logging

import faust
from redis.asyncio import Redis

from streams.app import create_app
from streams.catalog import Catalog
from streams.encoder import ItemEncoder, pretrained_model_dir
from streams.feed import CatalogFeed
from streams.model import choose_model
from streams.online import OnlineState, RedisKeys
from streams.settings import StreamsSettings
from streams.topics import TopicSetup, topic_specs

log = logging.getLogger(__name__)


def build_worker(settings: StreamsSettings) -> faust.Worker:
    """Load the model once and wire every service; nothing connects before the worker starts."""
    model = choose_model(settings.artifact_dir, settings.model_dir or pretrained_model_dir())
    encoder = ItemEncoder.load(
        model.encoder_dir, device=settings.device, bf16=settings.bf16,
        max_length=settings.max_length,
    )
    log.info("model version %s", model.version)
    catalog = Catalog(model_version=model.version, dim=encoder.dim)
    online = OnlineState(
        Redis.from_url(settings.redis_url),
        keys=RedisKeys(settings.redis_prefix),
        group=settings.app_id,
        source_topic=settings.topic_events,
        seen_length=settings.history_length,
        retry_initial_s=settings.redis_retry_initial_s,
        retry_max_s=settings.redis_retry_max_s,
    )
    app = create_app(settings, catalog=catalog, encoder=encoder, online=online)
    servers = settings.bootstrap_servers()
    # Services start in this order, all before the app: topics exist before anything
    # subscribes, and the catalog is loaded before the first event is judged against it.
    return faust.Worker(
        app,
        TopicSetup(topic_specs(settings), bootstrap_servers=servers),
        CatalogFeed(
            catalog,
            bootstrap_servers=servers,
            topic_items=settings.topic_items,
            topic_item_vectors=settings.topic_item_vectors,
            fetch_max_wait_ms=settings.catalog_fetch_max_wait_ms,
            max_item_bytes=settings.max_event_bytes,
        ),
        online,
        loglevel=settings.log_level,
    )
