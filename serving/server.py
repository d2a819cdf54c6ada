"""The server process: every object built from settings, the gRPC server, start and stop.

``create_server`` only assembles the gRPC server; :func:`running` builds the index,
catalog, stores and feeds around it; :func:`serve` runs until SIGTERM/SIGINT, then marks
the health NOT_SERVING and stops with a grace period for calls in flight.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import faiss
import grpc
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis
from redis.exceptions import RedisError

from protos import recommender_pb2, recommender_pb2_grpc
from serving.artifact import load_production
from serving.catalog import Catalog
from serving.errors import ArtifactError, BrokerUnavailable
from serving.feeds import CatalogUpdates, Handler, TopicFeed, VectorUpdates
from serving.index import ItemIndex
from serving.online import OnlineStore
from serving.recommender import Recommender
from serving.requests import Limits
from serving.servicer import RecommenderServicer
from serving.settings import ServingSettings
from serving.tracking import EventSink

log = logging.getLogger(__name__)

SERVICE_NAME: str = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
_HEALTH_NAMES = ("", SERVICE_NAME)  # "" is the whole server


def create_server(
    settings: ServingSettings,
    *,
    servicer: recommender_pb2_grpc.RecommenderServicer,
    health_servicer: health.aio.HealthServicer,
) -> tuple[grpc.aio.Server, int]:
    """An unstarted server with the recommender, health and reflection, bound to its port."""
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", settings.max_receive_message_bytes)]
    )
    recommender_pb2_grpc.add_RecommenderServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
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


@asynccontextmanager
async def running(settings: ServingSettings) -> AsyncIterator[Running]:
    """Build everything, start the server (NOT_SERVING until the feeds have caught up) and
    stop it all on exit."""
    model = load_production(settings.artifact_dir, settings.dim)
    faiss.omp_set_num_threads(settings.faiss_threads)
    index = ItemIndex(model.dim)
    try:
        index.upsert(model.item_ids, model.vectors)
    except ValueError as error:
        raise ArtifactError(f"model {model.version}: {error}") from error
    catalog = Catalog()
    feeds = [
        _feed(settings.topic_item_vectors, VectorUpdates(index, model_version=model.version), settings),
        _feed(settings.topic_items, CatalogUpdates(catalog), settings),
    ]
    redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id=settings.client_id,
        acks="all",
        enable_idempotence=True,
    )
    recommender = Recommender(
        index=index,
        catalog=catalog,
        store=OnlineStore(redis, prefix=settings.redis_prefix, seen_limit=settings.seen_limit,
                          dim=model.dim),
        model_version=model.version,
        candidate_margin=settings.candidate_margin,
        max_candidates=settings.max_candidates,
    )
    health_servicer = health.aio.HealthServicer()
    servicer = RecommenderServicer(
        recommender=recommender,
        sink=EventSink(producer, topic=settings.topic_events, timeout_s=settings.track_timeout_s),
        limits=Limits.from_settings(settings),
    )
    server, port = create_server(settings, servicer=servicer, health_servicer=health_servicer)
    tasks: list[asyncio.Task[None]] = []
    try:
        try:
            await producer.start()
        except KafkaError as error:
            raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap}: {error}") from error
        try:
            await redis.ping()
        except (RedisError, OSError) as error:
            log.warning("Redis is not reachable yet (%s); Recommend is UNAVAILABLE until it is", error)
        tasks = [asyncio.create_task(feed.run(), name=f"feed {feed.topic}") for feed in feeds]
        await set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        tasks.append(asyncio.create_task(_ready_when_loaded(feeds, health_servicer), name="ready"))
        log.info("model %s: listening on %s:%s", model.version, settings.host, port)
        yield Running(server, port, health_servicer, recommender, feeds)
    finally:
        await set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(settings.grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
        await redis.aclose()
        log.info("stopped")


def _feed(topic: str, handle: Handler, settings: ServingSettings) -> TopicFeed:
    return TopicFeed(
        topic,
        handle,
        bootstrap_servers=settings.bootstrap_servers(),
        client_id=settings.client_id,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        retry_s=settings.kafka_retry_s,
        poll_s=settings.topic_poll_s,
    )


async def _ready_when_loaded(
    feeds: Sequence[TopicFeed], health_servicer: health.aio.HealthServicer
) -> None:
    await asyncio.gather(*(feed.loaded.wait() for feed in feeds))
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
