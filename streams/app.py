"""The Faust app, wired from settings: the items agent, the events consumer (a service
of the app with its own consumer group, :mod:`streams.events.partitions`), model
releases applied between batches, deferred user vectors (:mod:`streams.pending`), users
waiting for item vectors, and stats.

Values and keys travel as raw bytes; the handlers decode protobuf themselves so that
undecodable input is dead-lettered instead of crashing an agent.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import faust
from faust import Stream
from faust.types import StreamT

from contracts.security import faust_credentials
from streams.catalog import Catalog
from streams.events.handler import EventsHandler
from streams.events.partitions import EventsConsumer
from streams.events.seenstore import SeenStore
from streams.events.stages.admit import Policy
from streams.events.transactions import Transactions
from streams.events.userstore import UserStore
from streams.history import weights_by_type
from streams.items import ItemsHandler
from streams.live import LiveModel, LoadedModel
from streams.metrics import StreamsMetrics
from streams.online import OnlineState
from streams.settings import StreamsSettings
from streams.transport import ShortFetchTransport
from streams.validation import EventLimits
from streams.waiting import WaitingUsers

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 30.0


def faust_config(settings: StreamsSettings) -> dict[str, Any]:
    """Keyword arguments of ``faust.App`` for these settings."""
    return {
        "broker": [f"kafka://{server}" for server in settings.bootstrap_servers()],
        "key_serializer": "raw",
        "value_serializer": "raw",
        "datadir": str(settings.datadir),
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.session_timeout_s / 4,
        "producer_linger": settings.producer_linger_ms / 1000.0,
        "web_enabled": settings.web_enabled,
        "web_port": settings.web_port,
        "autodiscover": False,
        **faust_credentials(settings),
    }


def create_app(
    settings: StreamsSettings, *, catalog: Catalog, live: LiveModel, online: OnlineState,
    metrics: StreamsMetrics,
) -> faust.App:
    """Build the app; nothing connects until a worker starts it."""
    app = faust.App(settings.app_id, **faust_config(settings))
    # Set before anything touches app.topics, which would build the default transport.
    app.transport = ShortFetchTransport(
        app.conf.broker_consumer, app, fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        gap_checked=frozenset({settings.topic_items}),
    )
    servers = settings.bootstrap_servers()
    group = settings.events_group()
    consumer: EventsConsumer | None = None

    def owns(partition: int) -> bool:
        return consumer is not None and partition in consumer.assignment()

    transactions = Transactions(
        bootstrap_servers=servers,
        group_id=group,
        transactional_prefix=settings.app_id,
        security=settings,
        topic=settings.topic_events,
        commit_interval_s=settings.commit_interval_s,
        transaction_timeout_ms=int(settings.transaction_timeout_s * 1000),
        owns=owns,
    )
    users = UserStore(topic=settings.users_changelog(), bootstrap_servers=servers,
                      security=settings)
    seen = SeenStore(topic=settings.dedupe_changelog(), bootstrap_servers=servers, security=settings,
                     window_ms=int(settings.dedupe_window_s * 1000))

    items = app.topic(settings.topic_items, key_type=bytes, value_type=bytes)
    dlq = app.topic(settings.topic_dlq, key_type=bytes, value_type=bytes)
    item_vectors = app.topic(settings.topic_item_vectors, key_type=bytes, value_type=bytes)

    items_handler = ItemsHandler(
        catalog=catalog, live=live, item_vectors=item_vectors, dlq=dlq,
        max_item_bytes=settings.max_event_bytes, batch_size=settings.item_batch_size,
        metrics=metrics,
    )
    events_handler = EventsHandler(
        catalog=catalog,
        users=users,
        seen=seen,
        online=online,
        enriched=settings.topic_enriched,
        dlq=settings.topic_dlq,
        relations=settings.topic_relations,
        policy=Policy(
            limits=EventLimits(settings.max_event_bytes, settings.max_future_skew_ms),
            weights=weights_by_type(settings.weights),
            history_length=settings.history_length,
            dedupe_window=settings.dedupe_window,
        ),
        live=live,
        metrics=metrics,
        waiting=WaitingUsers(max_users=settings.waiting_users_max),
        vector_mode=settings.user_vectors,
    )
    consumer = EventsConsumer(
        handler=events_handler, transactions=transactions, users=users, seen=seen, live=live,
        metrics=metrics, bootstrap_servers=servers, topic=settings.topic_events, group=group,
        security=settings,
        legacy_group=settings.app_id,
        batch_size=settings.event_batch_size,
        batch_wait_ms=int(settings.event_batch_within_s * 1000),
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        session_timeout_s=settings.session_timeout_s,
    )
    transactions.after_commit = events_handler.committed
    online.before_read_back = transactions.flush
    online.on_lost_vectors = events_handler.note_lost_vectors
    app.add_dependency(consumer)
    metrics.use_model(live.version)

    @app.agent(items, name="items")
    async def embed_items(stream: StreamT) -> None:
        # take_events is on faust.Stream, not on its StreamT interface.
        async for batch in cast(Stream, stream).take_events(
            settings.item_batch_size, within=settings.item_batch_within_s
        ):
            await items_handler.handle(batch)

    @app.task
    async def apply_releases() -> None:
        # Releases loaded by streams.releases.ModelReleases, applied between batches.
        while True:
            model = await live.pending.get()
            await switch_model(model, live=live, catalog=catalog, items=items_handler,
                               events=events_handler, metrics=metrics)

    @app.task
    async def embed_pending_users() -> None:
        # Deferred user vectors (streams.pending): one encoder pass after another.
        while True:
            await events_handler.embed_pending(most=settings.user_vector_batch_max,
                                               within_s=settings.user_vector_within_s)

    @app.timer(settings.waiting_check_interval_s)
    async def embed_waiting_users() -> None:
        # Users whose events came before their items' vectors, once the vectors exist.
        embedded = await events_handler.embed_waiting()
        if embedded:
            log.info("%s users embedded again: their items' vectors arrived, or they were "
                     "restored without a vector", embedded)

    last = {"accepted": 0, "rejected": 0, "embedded": 0, "kept": 0}

    @app.timer(STATS_INTERVAL_S)
    async def log_stats() -> None:
        now = {
            "accepted": events_handler.accepted,
            "rejected": sum(events_handler.rejected.values()),
            "embedded": items_handler.embedded,
            "kept": items_handler.kept,
        }
        if now != last:
            log.info(
                "last %.0f s: %s events accepted, %s dead-lettered, %s items embedded, %s "
                "item records kept their vector (text unchanged); dead letters since start "
                "%s; catalog %s items, %s vectors",
                STATS_INTERVAL_S, now["accepted"] - last["accepted"],
                now["rejected"] - last["rejected"], now["embedded"] - last["embedded"],
                now["kept"] - last["kept"],
                dict(events_handler.rejected), len(catalog), catalog.vector_count(),
            )
            last.update(now)

    return app


async def switch_model(
    model: LoadedModel, *, live: LiveModel, catalog: Catalog, items: ItemsHandler,
    events: EventsHandler, metrics: StreamsMetrics,
) -> None:
    """Use `model` from the next batch on: its item vectors, vectors for the catalog items
    it lacks (published), and a vector of it for every user of this worker's table."""
    async with live.lock:
        previous = live.version
        catalog.switch(model.version, model.dim, model.item_vectors, model.made_at_ms,
                       model.text_hashes)
        live.current = model
        events.waiting.clear()  # re-embedding every user below notes them for this version
    metrics.use_model(model.version)
    embedded = await items.embed_missing()
    users = await events.reembed()
    log.info("switched from model %s to %s: %s items embedded, %s users re-embedded",
             previous, model.version, embedded, users)
