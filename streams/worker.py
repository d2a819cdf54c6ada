"""One place that builds everything a worker runs: model, catalog, Redis, services, app."""

from __future__ import annotations

import logging
from functools import partial

import faust
import torch
from mode import Service
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from contracts.online import RedisKeys
from contracts.relations import RelationLimits
from contracts.social import type_weights
from contracts.security import async_redis_client
from streams.app import create_app
from streams.catalog import Catalog
from streams.events.transactions import Transactions
from streams.fanout import Fanout
from streams.feed import CatalogFeed
from streams.live import EncoderOptions, LiveModel, load_model, pretrained_dir
from streams.metrics import MetricsServer, StreamsMetrics
from streams.model import choose_model
from streams.online import Caps, OnlineState
from streams.recovery import EnrichedLog
from streams.relations import RelationsConsumer
from streams.releases import ModelReleases
from streams.settings import StreamsSettings
from streams.topics import TopicSetup, topic_specs
from streams.trending import windows_from_settings
from streams.towerprocess import TowerProcess

log = logging.getLogger(__name__)


def fanout(settings: StreamsSettings) -> Fanout:
    """What acts are written into followers' feeds, and how."""
    return Fanout(weights=type_weights(settings.social_weights),
                  tau_ms=settings.social_tau_s * 1000.0, cap=settings.social_feed_cap,
                  backfill=settings.social_backfill, ttl_s=settings.user_ttl_s)


def online_state(settings: StreamsSettings, client: Redis,
                 metrics: StreamsMetrics | None = None) -> OnlineState:
    """The Redis writer with the settings' key prefix, caps, trending windows, fan-out and
    retries; on a Redis Cluster with the fan-out only when the relations reader runs (no
    graph, no followers to read), and reading back from the enriched events what a failed
    master lost (:mod:`streams.online`, :mod:`streams.recovery`)."""
    cluster = isinstance(client, RedisCluster)
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
        fanout=fanout(settings) if not cluster or settings.relations_enabled else None,
        on_fanout=metrics.fanned_out if metrics is not None else None,
        recovery=EnrichedLog(bootstrap_servers=settings.bootstrap_servers(),
                             topic=settings.topic_enriched, source_topic=settings.topic_events,
                             security=settings) if cluster else None,
    )


def graph_services(settings: StreamsSettings, online: OnlineState,
                   metrics: StreamsMetrics) -> list[Service]:
    """The relations reader when the worker runs one (``relations_enabled``)."""
    return [relations_consumer(settings, online, metrics)] if settings.relations_enabled else []


def relations_consumer(settings: StreamsSettings, online: OnlineState,
                       metrics: StreamsMetrics) -> RelationsConsumer:
    """The relations reader, with a transactional producer per partition of relations."""
    servers = settings.bootstrap_servers()
    consumer: RelationsConsumer | None = None

    def owns(partition: int) -> bool:
        return consumer is not None and partition in consumer.assignment()

    transactions = Transactions(
        bootstrap_servers=servers, group_id=settings.relations_group(),
        transactional_prefix=settings.app_id, security=settings,
        topic=settings.topic_relations, commit_interval_s=settings.commit_interval_s,
        transaction_timeout_ms=int(settings.transaction_timeout_s * 1000), owns=owns,
    )
    consumer = RelationsConsumer(
        online=online, transactions=transactions, metrics=metrics, bootstrap_servers=servers,
        topic=settings.topic_relations, group=settings.relations_group(),
        dlq=settings.topic_dlq, security=settings,
        limits=RelationLimits(max_bytes=settings.max_relation_bytes,
                              max_future_skew_ms=settings.max_future_skew_ms,
                              max_id_chars=settings.max_relation_id_chars),
        fanout_threshold=settings.fanout_threshold,
        batch_size=settings.event_batch_size,
        batch_wait_ms=int(settings.event_batch_within_s * 1000),
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        session_timeout_s=settings.session_timeout_s,
    )
    return consumer


def build_worker(settings: StreamsSettings) -> faust.Worker:
    """Load the model once and wire every service; nothing connects before the worker starts."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    pretrained = pretrained_dir(settings.model_dir)
    tower = TowerProcess(threads=settings.torch_threads or 1) if settings.tower_process else None
    options = EncoderOptions(device=settings.device, bf16=settings.bf16,
                             half_life_ms=settings.decay_half_life_s * 1000.0, tower=tower)
    model = load_model(choose_model(settings.artifact_dir, pretrained), options)
    log.info("model version %s", model.version)
    live = LiveModel(model)
    catalog = Catalog(model_version=model.version, dim=model.dim)
    catalog.switch(model.version, model.dim, model.item_vectors, model.made_at_ms,
                       model.text_hashes)
    metrics = StreamsMetrics()
    online = online_state(settings, async_redis_client(settings.redis_url, settings), metrics)
    app = create_app(settings, catalog=catalog, live=live, online=online, metrics=metrics)
    servers = settings.bootstrap_servers()
    # Services start in this order, all before the app: topics exist before anything
    # subscribes, and the catalog is loaded before the first event is judged against it.
    extra: list[Service] = graph_services(settings, online, metrics)
    groups = [settings.events_group(), settings.app_id]
    if settings.relations_enabled:
        groups.append(settings.relations_group())
    if settings.metrics_port is not None:
        extra.append(MetricsServer(metrics, host=settings.metrics_host, port=settings.metrics_port))
    return faust.Worker(
        app,
        TopicSetup(topic_specs(settings), bootstrap=settings.kafka_bootstrap,
                   groups=groups, security=settings),
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
