"""The server process: every object built from settings, the gRPC server, start and stop.

``create_server`` only assembles the gRPC server; :func:`running` builds the index,
catalog, stores and feeds around it; :func:`serve` runs until SIGTERM/SIGINT, then marks
the health NOT_SERVING and stops with a grace period for calls in flight.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import grpc
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import RedisError

from contracts import routing as contract
from contracts.security import async_redis_client, kafka_kwargs
from contracts.topics import EVENTS, RECOMMENDATIONS, ROUTING, TopicContractError, TopicSpec, ensure_topics, spec
from protos import events_pb2, recommender_pb2, recommender_pb2_grpc
from serving.artifact import production_version
from serving.auth import TokenAuth, server_credentials
from serving.catalog import Catalog
from serving.errors import AddressUnavailable, ArtifactError, BrokerUnavailable
from serving.feeds import CatalogUpdates, Handler, TopicFeed, VectorUpdates
from serving.metrics import Metrics
from serving.models import Models
from serving.routing import RoutingFollower, VersionLoader, production_routing, read_in_force
from serving.online import OnlineStore
from serving.recommender import Recommender, Tuning
from serving.releases import ModelAdmin
from serving.requests import Limits
from serving.servicer import AdminServicer, DiagnosticsServicer, RecommenderServicer
from serving.settings import ServingSettings
from serving.tracking import EventSink, RecommendationLog

log = logging.getLogger(__name__)

SERVICE_NAME: str = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
DIAGNOSTICS_NAME: str = recommender_pb2.DESCRIPTOR.services_by_name["Diagnostics"].full_name
ADMIN_NAME: str = recommender_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
_HEALTH_NAMES = ("", SERVICE_NAME)  # "" is the whole server


def create_server(
    settings: ServingSettings,
    *,
    servicer: recommender_pb2_grpc.RecommenderServicer,
    health_servicer: health.aio.HealthServicer,
    diagnostics: recommender_pb2_grpc.DiagnosticsServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """An unstarted public server (recommender, diagnostics, health, reflection) bound to its
    port, with TLS and bearer-token checks when configured."""
    tokens = [token.get_secret_value() for token in settings.auth_tokens]
    server = grpc.aio.server(
        interceptors=[TokenAuth(tokens)] if tokens else None,
        # SO_REUSEPORT only where processes share the port on purpose (the workers of
        # serving.workers): elsewhere a second server on a taken port fails to start
        options=[("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                 ("grpc.so_reuseport", int(settings.reuse_port)),
                 *_connection_age(settings)],
    )
    recommender_pb2_grpc.add_RecommenderServicer_to_server(servicer, server)
    names = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if diagnostics is not None:
        recommender_pb2_grpc.add_DiagnosticsServicer_to_server(diagnostics, server)
        names.append(DIAGNOSTICS_NAME)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(names, server)
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings)
    with _binding(address):
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    return server, port


@contextmanager
def _binding(address: str) -> Iterator[None]:
    """gRPC's failure to bind `address` as AddressUnavailable (a clear start-up error)."""
    try:
        yield
    except RuntimeError as error:
        raise AddressUnavailable(f"cannot listen on {address}: taken by another process, "
                                 "or not an address of this host") from error


def _connection_age(settings: ServingSettings) -> list[tuple[str, int]]:
    """Close client connections after `max_connection_age_s` (calls in flight get `grace_s`)."""
    if settings.max_connection_age_s is None:
        return []
    return [("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_s * 1000))]


def create_admin_server(
    settings: ServingSettings, *, admin: recommender_pb2_grpc.AdminServicer
) -> tuple[grpc.aio.Server, int]:
    """An unstarted admin server on ``admin_host:admin_port``, or on the Unix socket
    ``admin_socket`` (plaintext: bind it to a private address)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a taken admin port fails start-up
    recommender_pb2_grpc.add_AdminServicer_to_server(admin, server)
    reflection.enable_server_reflection((ADMIN_NAME, reflection.SERVICE_NAME), server)
    if settings.admin_socket is not None:
        settings.admin_socket.unlink(missing_ok=True)  # left by a worker that was killed
        address = f"unix:{settings.admin_socket}"
    else:
        address = f"{settings.admin_host}:{settings.admin_port or 0}"
    with _binding(address):
        port = server.add_insecure_port(address)
    return server, port


async def set_health(
    health_servicer: health.aio.HealthServicer, status: health_pb2.HealthCheckResponse.ServingStatus
) -> None:
    """Set the status of the server and of the Recommender service."""
    for name in _HEALTH_NAMES:
        await health_servicer.set(name, status)


@dataclass(frozen=True)
class Running:
    """A started server and what tests and operators look at."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    recommender: Recommender
    feeds: Sequence[TopicFeed]
    routing: RoutingFollower
    admin_port: int | None
    metrics: Metrics
    metrics_port: int | None
    recommendation_log: RecommendationLog


@asynccontextmanager
async def running(settings: ServingSettings) -> AsyncIterator[Running]:
    """Build everything, start the server (NOT_SERVING until the feeds have caught up) and
    stop it all on exit."""
    routing_feed_id = f"{settings.client_id}-routing"
    try:  # routing is written by Admin here and read back at once: it must exist first
        await ensure_topics(settings.kafka_bootstrap, [spec(ROUTING, settings.topic_routing, settings)],
                            client_id=routing_feed_id, security=settings)
    except (KafkaError, TopicContractError) as error:
        raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap}: {error}") from error
    in_force = await read_in_force(settings.bootstrap_servers(), routing_feed_id,
                                   settings.topic_routing, settings)
    load = VersionLoader(artifact_dir=settings.artifact_dir, dim=settings.dim,
                         ivf_threshold=settings.ivf_threshold, nprobe=settings.nprobe,
                         cache_dir=settings.index_cache_dir)
    # every core for the start-up build (IVF training); nothing is served yet
    models, follower = await _first_routing(load, in_force, settings.artifact_dir)
    faiss.omp_set_num_threads(settings.faiss_threads)
    catalog = Catalog()
    feeds = [
        _feed(settings.topic_item_vectors, VectorUpdates(models), settings),
        _feed(settings.topic_items, CatalogUpdates(catalog), settings),
        _feed(settings.topic_routing, follower, settings, fetch_max_wait_ms=100),
    ]
    redis = async_redis_client(
        settings.redis_url, settings,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id=settings.client_id,
        acks="all",
        enable_idempotence=True,
        **kafka_kwargs(settings),
    )
    # Its own producer: lingering batches many log entries per request to the broker
    # (cheap for both sides), which TrackEvents' acknowledged sends must not wait for.
    log_producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id=f"{settings.client_id}-log",
        acks=1,
        linger_ms=settings.log_linger_ms,
        **kafka_kwargs(settings),
    )
    recommendation_log = RecommendationLog(log_producer, topic=settings.topic_recommendations,
                                           queue_size=settings.log_queue)
    metrics = Metrics(models)
    recommender = Recommender(
        models=models,
        catalog=catalog,
        store=OnlineStore(redis, prefix=settings.redis_prefix, seen_limit=settings.seen_limit,
                          coalesce=settings.redis_coalesce,
                          exclude_types=tuple(settings.exclude_event_types),
                          trending_window=settings.trending_window,
                          trending_tau_s=settings.trending_tau_s),
        tuning=Tuning(
            candidate_margin=settings.candidate_margin,
            max_candidates=settings.max_candidates,
            exclude_seen=settings.exclude_seen,
            recent_items=settings.recent_items,
            search_in_thread=settings.search_in_thread,
            coalesce_search=settings.search_coalesce,
        ),
        log=recommendation_log,
    )
    health_servicer = health.aio.HealthServicer()
    servicer = RecommenderServicer(
        recommender=recommender,
        sink=EventSink(producer, topic=settings.topic_events, timeout_s=settings.track_timeout_s),
        limits=Limits.from_settings(settings),
        metrics=metrics,
    )
    admin_server: grpc.aio.Server | None = None
    admin_port: int | None = None
    try:
        server, port = create_server(settings, servicer=servicer, health_servicer=health_servicer,
                                     diagnostics=DiagnosticsServicer(metrics))
        if settings.admin_port is not None or settings.admin_socket is not None:
            admin = ModelAdmin(follower, producer, topic=settings.topic_routing,
                               writer=f"serving {socket.gethostname()}:{os.getpid()}")
            admin_server, admin_port = create_admin_server(settings, admin=AdminServicer(admin, metrics))
    except AddressUnavailable:
        await producer.stop()  # never started: nothing to flush, only handles to close
        await log_producer.stop()
        await redis.aclose()
        raise
    metrics_port: int | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        try:
            await ensure_topics(settings.kafka_bootstrap, written_topics(settings),
                                client_id=f"{settings.client_id}-setup", security=settings)
            await producer.start()
            await log_producer.start()
        except (KafkaError, TopicContractError) as error:
            raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap}: {error}") from error
        try:
            async with asyncio.timeout(min(settings.redis_timeout_s, 2.0)):  # a warning only
                await redis.ping()
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("Redis is not reachable yet (%s); Recommend is UNAVAILABLE until it is", error)
        tasks = [asyncio.create_task(feed.run(), name=f"feed {feed.topic}") for feed in feeds]
        tasks.append(asyncio.create_task(follower.run(), name="routing"))
        tasks.append(asyncio.create_task(recommendation_log.run(), name="recommendation log"))
        await set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        if admin_server is not None:
            await admin_server.start()
        if settings.metrics_port is not None:
            metrics_port = metrics.serve(settings.metrics_host, settings.metrics_port)
        tasks.append(asyncio.create_task(_ready_when_loaded(feeds, follower, health_servicer),
                                         name="ready"))
        log.info("model %s: listening on %s:%s (admin %s, metrics %s)", models.routing.production,
                 settings.host, port, settings.admin_socket or admin_port, metrics_port)
        yield Running(server, port, health_servicer, recommender, feeds, follower, admin_port,
                      metrics, metrics_port, recommendation_log)
    finally:
        await set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        if admin_server is not None:
            await admin_server.stop(0)
        await server.stop(settings.grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(recommendation_log.drain(), settings.grace_s)
        except TimeoutError:
            log.warning("recommendation log not drained within %.1f s", settings.grace_s)
        await producer.stop()
        await log_producer.stop()
        await redis.aclose()
        metrics.close()
        log.info("stopped")


def written_topics(settings: ServingSettings) -> list[TopicSpec]:
    """The topics serving writes (TrackEvents, the recommendation log), created at start
    with their contract settings; the ones it reads are waited for, never created."""
    return [spec(EVENTS, settings.topic_events, settings),
            spec(RECOMMENDATIONS, settings.topic_recommendations, settings)]


def _feed(topic: str, handle: Handler, settings: ServingSettings, *,
          fetch_max_wait_ms: int | None = None) -> TopicFeed:
    """A feed of `topic`; routing needs no 10 ms freshness, so its fetches wait longer."""
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


async def _ready_when_loaded(
    feeds: Sequence[TopicFeed], follower: RoutingFollower,
    health_servicer: health.aio.HealthServicer,
) -> None:
    await asyncio.gather(*(feed.loaded.wait() for feed in feeds))
    await follower.caught_up()  # the versions the routing in force names are loaded
    follower.loaded.set()
    # What start-up built (index maps of every item, catalog, libraries) lives as long as
    # the process: kept out of the collector, whose full passes over it stall the loop.
    gc.collect()
    gc.freeze()
    await set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    log.info("catalog topics loaded: SERVING")


async def serve(settings: ServingSettings) -> None:
    """Run the server until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(settings):
        await stop.wait()
        log.info("signal received: NOT_SERVING, stopping within %.1f s", settings.grace_s)
