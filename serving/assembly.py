"""Every part of one server process, built from settings: nothing is served from here.

:func:`build` reads the routing in force and loads its production version (the one
start-up step that must talk to Kafka and read the artifact store), then wires the
catalog, feeds, Redis and Kafka clients, recommender, servicers and metrics by keyword.
:mod:`serving.server` starts them, serves and stops them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from grpc_health.v1 import health
from redis.asyncio import Redis

from contracts import routing as contract
from contracts.security import async_redis_client, kafka_kwargs
from contracts.social import SocialReadLimits
from contracts.topics import (
    DELETIONS,
    EVENTS,
    RECOMMENDATIONS,
    RELATIONS,
    ROUTING,
    TopicContractError,
    TopicSpec,
    ensure_topics,
    spec,
)
from protos import events_pb2
from serving.artifact import production_version
from serving.catalog import Catalog
from serving.cluster import STORE_ERRORS
from serving.deletions import DeletionWriter
from serving.errors import ArtifactError, BrokerUnavailable
from serving.feeds import CatalogUpdates, Handler, TopicFeed, VectorUpdates
from serving.metrics import Metrics
from serving.models import Models
from serving.online import OnlineStore
from serving.recommender import Recommender, Tuning
from serving.releases import ModelAdmin
from serving.requests import Limits
from serving.routing import RoutingFollower, VersionLoader, production_routing, read_in_force
from serving.servicer import AdminServicer, DiagnosticsServicer, RecommenderServicer
from serving.settings import ServingSettings
from serving.social import SocialGraph, SocialTuning
from serving.tracking import EventSink, RecommendationLog, RelationSink

log = logging.getLogger(__name__)

# Redis is only pinged at start, for a warning: Recommend answers UNAVAILABLE until it is up.
_PING_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Clients:
    """The connections to Kafka and Redis: opened by :meth:`start`, closed by :meth:`close`."""

    redis: Redis
    producer: AIOKafkaProducer  # TrackEvents and routing records: acks=all, idempotent
    log_producer: AIOKafkaProducer  # the recommendation log: lingering, acks=all
    deletions: DeletionWriter | None = None  # DeleteUser's transactional producer (admin only)

    async def start(self, settings: ServingSettings) -> None:
        """The written topics created if missing, the producers connected (BrokerUnavailable
        if Kafka refuses), Redis pinged (a warning only)."""
        try:
            await ensure_topics(settings.kafka_bootstrap, written_topics(settings),
                                client_id=f"{settings.client_id}-setup", security=settings)
            await self.producer.start()
            await self.log_producer.start()
            if self.deletions is not None:
                await self.deletions.start()
        except (KafkaError, TopicContractError) as error:
            raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap}: {error}") from error
        try:
            async with asyncio.timeout(min(settings.redis_timeout_s, _PING_TIMEOUT_S)):
                await self.redis.ping()
        except (*STORE_ERRORS, TimeoutError) as error:
            log.warning("Redis is not reachable yet (%s); Recommend is UNAVAILABLE until it is", error)

    async def close(self) -> None:
        """Flush and close the producers (also when never started), close Redis."""
        await self.producer.stop()
        await self.log_producer.stop()
        if self.deletions is not None:
            await self.deletions.stop()
        await self.redis.aclose()


@dataclass(frozen=True)
class Service:
    """What one server process serves, built and wired; nothing started yet."""

    models: Models
    routing: RoutingFollower
    feeds: list[TopicFeed]  # item vectors, items, routing
    recommender: Recommender
    recommendation_log: RecommendationLog
    metrics: Metrics
    health: health.aio.HealthServicer
    servicer: RecommenderServicer
    diagnostics: DiagnosticsServicer
    admin: AdminServicer | None  # None without an admin port or socket
    clients: Clients


async def build(settings: ServingSettings) -> Service:
    """Every part of a server process from `settings`, the production version loaded."""
    models, follower = await routing_at_start(settings)
    faiss.omp_set_num_threads(settings.faiss_threads)  # the start-up build used every core
    catalog = Catalog()
    clients = Clients(redis=redis_client(settings), producer=event_producer(settings),
                      log_producer=log_producer(settings), deletions=deletion_writer(settings))
    recommendation_log = RecommendationLog(clients.log_producer, topic=settings.topic_recommendations,
                                           queue_size=settings.log_queue)
    metrics = Metrics(models)
    recommender = Recommender(models=models, catalog=catalog, store=online_store(settings, clients.redis),
                              tuning=tuning(settings), log=recommendation_log,
                              social=social_graph(settings, clients.redis, metrics))
    servicer = RecommenderServicer(
        recommender=recommender,
        sink=EventSink(clients.producer, topic=settings.topic_events, timeout_s=settings.track_timeout_s),
        relations=RelationSink(clients.producer, topic=settings.topic_relations,
                               timeout_s=settings.track_timeout_s, what="relations"),
        limits=Limits.from_settings(settings),
        metrics=metrics,
    )
    return Service(
        models=models,
        routing=follower,
        feeds=topic_feeds(settings, models=models, catalog=catalog, follower=follower),
        recommender=recommender,
        recommendation_log=recommendation_log,
        metrics=metrics,
        health=health.aio.HealthServicer(),
        servicer=servicer,
        diagnostics=DiagnosticsServicer(metrics),
        admin=admin_servicer(settings, follower=follower, producer=clients.producer,
                             deletions=clients.deletions, metrics=metrics),
        clients=clients,
    )


async def routing_at_start(settings: ServingSettings) -> tuple[Models, RoutingFollower]:
    """`model-routing` created if missing and read to its end; the production version of
    the record in force loaded (every core for the index build: nothing is served yet)."""
    client_id = f"{settings.client_id}-routing"
    try:  # routing is written by Admin here and read back at once: it must exist first
        await ensure_topics(settings.kafka_bootstrap, [spec(ROUTING, settings.topic_routing, settings)],
                            client_id=client_id, security=settings)
    except (KafkaError, TopicContractError) as error:
        raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap}: {error}") from error
    in_force = await read_in_force(settings.bootstrap_servers(), client_id, settings.topic_routing,
                                   settings)
    load = VersionLoader(artifact_dir=settings.artifact_dir, dim=settings.dim,
                         ivf_threshold=settings.ivf_threshold, nprobe=settings.nprobe,
                         cache_dir=settings.index_cache_dir, memory_mb=settings.index_memory_mb)
    return await _first_routing(load, in_force, settings.artifact_dir)


async def _first_routing(load: VersionLoader, in_force: events_pb2.Routing | None,
                         artifact_dir: Path) -> tuple[Models, RoutingFollower]:
    """The production version of the record in force at start, or of ``production.json``
    without one; a record whose production cannot be read leaves ``production.json`` in
    force (the feed's replay reports it)."""
    fallback = production_routing(production_version(artifact_dir))
    first = in_force or fallback
    try:
        model = await load(first.production, contract.uri_of(first, first.production))
    except ArtifactError as error:
        if in_force is None:
            raise
        log.error("routing revision %s: production %s unreadable (%s); starting from %s",
                  in_force.revision, in_force.production, error, fallback.production)
        first = fallback
        model = await load(first.production, "")
    models = Models(model)  # the routing feed replays the record: its other versions load then
    return models, RoutingFollower(models, load, fallback=fallback)


def topic_feeds(settings: ServingSettings, *, models: Models, catalog: Catalog,
                follower: RoutingFollower) -> list[TopicFeed]:
    """The followed topics: item vectors into the loaded versions, items into the catalog,
    routing records into the follower (which needs no 10 ms freshness: longer fetch waits)."""
    return [
        _feed(settings.topic_item_vectors, VectorUpdates(models), settings),
        _feed(settings.topic_items, CatalogUpdates(catalog), settings),
        _feed(settings.topic_routing, follower, settings, fetch_max_wait_ms=100),
    ]


def _feed(topic: str, handle: Handler, settings: ServingSettings, *,
          fetch_max_wait_ms: int | None = None) -> TopicFeed:
    return TopicFeed(
        topic,
        handle,
        bootstrap_servers=settings.bootstrap_servers(),
        client_id=settings.client_id,
        fetch_max_wait_ms=fetch_max_wait_ms if fetch_max_wait_ms is not None
        else settings.kafka_fetch_max_wait_ms,
        retry_s=settings.kafka_retry_s,
        poll_s=settings.topic_poll_s,
        security=settings,
    )


def written_topics(settings: ServingSettings) -> list[TopicSpec]:
    """The topics serving writes (TrackEvents, TrackRelations, the recommendation log,
    DeleteUser), created at start with their contract settings; the ones it reads are
    waited for, never created."""
    return [spec(EVENTS, settings.topic_events, settings),
            spec(RELATIONS, settings.topic_relations, settings),
            spec(RECOMMENDATIONS, settings.topic_recommendations, settings),
            spec(DELETIONS, settings.topic_deletions, settings)]


def redis_client(settings: ServingSettings) -> Redis:
    return async_redis_client(settings.redis_url, settings, socket_timeout=settings.redis_timeout_s,
                              socket_connect_timeout=settings.redis_timeout_s)


def event_producer(settings: ServingSettings) -> AIOKafkaProducer:
    """TrackEvents' and Admin's producer: every send acknowledged by all replicas, once."""
    return AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), client_id=settings.client_id,
                            acks="all", enable_idempotence=True, **kafka_kwargs(settings))


def deletion_writer(settings: ServingSettings) -> DeletionWriter | None:
    """DeleteUser's writer when there is an Admin service: a transactional producer whose id
    names this host, public port and process slot (replicas on one host differ by port,
    each worker of a supervisor has its own client id), so a process restarted in the same
    place fences what its predecessor left open, and no replica fences another."""
    if settings.admin_port is None and settings.admin_socket is None:
        return None
    transactional_id = (settings.deletion_transactional_id
                        or f"{settings.client_id}-deletions-{socket.gethostname()}-{settings.port}")

    def make_producer() -> AIOKafkaProducer:
        return AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(),
                                client_id=f"{settings.client_id}-deletions",
                                transactional_id=transactional_id, acks="all",
                                enable_idempotence=True, **kafka_kwargs(settings))

    return DeletionWriter(make_producer, deletions_topic=settings.topic_deletions,
                          events_topic=settings.topic_events, timeout_s=settings.deletion_timeout_s,
                          requested_by=f"serving admin {socket.gethostname()}:{os.getpid()}",
                          clock=lambda: time.time_ns() // 1_000_000)


def log_producer(settings: ServingSettings) -> AIOKafkaProducer:
    """The recommendation log's own producer: lingering batches many log entries per request
    to the broker (cheap for both sides), which TrackEvents' acknowledged sends must not
    wait for. acks=all and idempotent like every other producer: the log is sent from a
    queue off the request path, and with replication a leader's crash loses no entry the
    log counted as sent, nor doubles one on retry."""
    return AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(),
                            client_id=f"{settings.client_id}-log", acks="all",
                            enable_idempotence=True,
                            linger_ms=settings.log_linger_ms, **kafka_kwargs(settings))


def online_store(settings: ServingSettings, redis: Redis) -> OnlineStore:
    return OnlineStore(redis, prefix=settings.redis_prefix, seen_limit=settings.seen_limit,
                       coalesce=settings.redis_coalesce, exclude_types=tuple(settings.exclude_event_types),
                       trending_window=settings.trending_window, trending_tau_s=settings.trending_tau_s)


def social_graph(settings: ServingSettings, redis: Redis, metrics: Metrics) -> SocialGraph:
    return SocialGraph(redis, prefix=settings.redis_prefix, metrics=metrics, tuning=SocialTuning(
        weight=settings.social_weight, tau_s=settings.social_tau_s,
        type_weights=settings.social_type_weights,
        limits=SocialReadLimits(feed=settings.social_feed_limit,
                                hot_followees=settings.social_hot_followees,
                                per_type=settings.social_per_type),
    ))


def tuning(settings: ServingSettings) -> Tuning:
    return Tuning(
        candidate_margin=settings.candidate_margin,
        max_candidates=settings.max_candidates,
        exclude_seen=settings.exclude_seen,
        recent_items=settings.recent_items,
        search_in_thread=settings.search_in_thread,
        coalesce_search=settings.search_coalesce,
    )


def admin_servicer(settings: ServingSettings, *, follower: RoutingFollower, producer: AIOKafkaProducer,
                   deletions: DeletionWriter | None, metrics: Metrics) -> AdminServicer | None:
    """The Admin service when an admin port or socket is set; its records name this process."""
    if settings.admin_port is None and settings.admin_socket is None:
        return None
    admin = ModelAdmin(follower, producer, topic=settings.topic_routing,
                       writer=f"serving {socket.gethostname()}:{os.getpid()}")
    return AdminServicer(admin, metrics, deletions=deletions, max_id_chars=settings.max_id_chars)
