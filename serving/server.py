"""The server process: the gRPC servers, start, serve and stop.

``create_server`` and ``create_admin_server`` only assemble gRPC servers; :func:`running`
builds a :class:`~serving.assembly.Service` from settings, starts it and its servers,
and stops them all on exit; :func:`serve` runs until SIGTERM/SIGINT, then marks the
health NOT_SERVING, keeps answering for ``shutdown_delay_s`` while clients move away, and
stops with a grace period for calls in flight.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos import recommender_pb2, recommender_pb2_grpc
from serving.assembly import Service, build
from serving.auth import TokenAuth, server_credentials
from serving.errors import AddressUnavailable
from serving.settings import ServingSettings
from serving.tracking import RecommendationLog

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
    """A started server: its ports, and the parts it serves."""

    server: grpc.aio.Server
    port: int
    admin_port: int | None
    metrics_port: int | None
    service: Service


@asynccontextmanager
async def running(settings: ServingSettings) -> AsyncIterator[Running]:
    """Build everything, start the server (NOT_SERVING until the feeds have caught up) and
    stop it all on exit."""
    service = await build(settings)
    # The servers with their servicers, bound but not started: a taken port stops here.
    admin_server: grpc.aio.Server | None = None
    admin_port: int | None = None
    try:
        server, port = create_server(settings, servicer=service.servicer, health_servicer=service.health,
                                     diagnostics=service.diagnostics)
        if service.admin is not None:
            admin_server, admin_port = create_admin_server(settings, admin=service.admin)
    except AddressUnavailable:
        await service.clients.close()  # never started: nothing to flush, only handles to close
        raise
    metrics_port: int | None = None
    tasks: list[asyncio.Task[None]] = []
    try:  # start: clients, feeds, servers; NOT_SERVING until the feeds have caught up
        await service.clients.start(settings)
        tasks = _run_in_background(service)
        await set_health(service.health, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        if admin_server is not None:
            await admin_server.start()
        if settings.metrics_port is not None:
            metrics_port = service.metrics.serve(settings.metrics_host, settings.metrics_port)
        tasks.append(asyncio.create_task(_ready_when_loaded(service), name="ready"))
        log.info("model %s: listening on %s:%s (admin %s, metrics %s)", service.models.routing.production,
                 settings.host, port, settings.admin_socket or admin_port, metrics_port)
        yield Running(server, port, admin_port, metrics_port, service)
    finally:  # stop: NOT_SERVING for good, calls in flight get grace_s, then the resources close
        await service.health.enter_graceful_shutdown()  # a late "ready" cannot say SERVING again
        if admin_server is not None:
            await admin_server.stop(0)
        await server.stop(settings.grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _drain(service.recommendation_log, settings.grace_s)
        await service.clients.close()
        service.metrics.close()
        log.info("stopped")


def _run_in_background(service: Service) -> list[asyncio.Task[None]]:
    """The feeds, the routing follower and the recommendation log's sender."""
    tasks = [asyncio.create_task(feed.run(), name=f"feed {feed.topic}") for feed in service.feeds]
    tasks.append(asyncio.create_task(service.routing.run(), name="routing"))
    tasks.append(asyncio.create_task(service.recommendation_log.run(), name="recommendation log"))
    return tasks


async def _ready_when_loaded(service: Service) -> None:
    """SERVING once every feed caught up and the versions the routing names are loaded."""
    await asyncio.gather(*(feed.loaded.wait() for feed in service.feeds))
    await service.routing.caught_up()  # the versions the routing in force names are loaded
    service.routing.loaded.set()
    # What start-up built (index maps of every item, catalog, libraries) lives as long as
    # the process: kept out of the collector, whose full passes over it stall the loop.
    gc.collect()
    gc.freeze()
    await set_health(service.health, health_pb2.HealthCheckResponse.SERVING)
    log.info("catalog topics loaded: SERVING")


async def _drain(recommendation_log: RecommendationLog, grace_s: float) -> None:
    try:
        await asyncio.wait_for(recommendation_log.drain(), grace_s)
    except TimeoutError:
        log.warning("recommendation log not drained within %.1f s", grace_s)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (the running loop's handlers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def serve(settings: ServingSettings) -> None:
    """Run the server until SIGTERM or SIGINT, then stop without failing a call: NOT_SERVING
    while still answering for `shutdown_delay_s` (clients that watch health stop sending),
    then no new calls and `grace_s` for those in flight (see :func:`running`)."""
    stop = stop_on_signals()
    async with running(settings) as run:
        await stop.wait()
        await run.service.health.enter_graceful_shutdown()
        log.info("signal received: NOT_SERVING, closing the port in %.1f s, calls in flight get %.1f s more",
                 settings.shutdown_delay_s, settings.grace_s)
        await asyncio.sleep(settings.shutdown_delay_s)
