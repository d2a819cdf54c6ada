"""Command-line client of the Recommender service, over the real gRPC stub.

    python -m serving.cli.client recommend --user 1m_10 -k 10 [--exclude ID] [--category C] [--not-category C] [--no-social]
    python -m serving.cli.client similar --item 'Toy Story (1995)' -k 10 [--user 1m_10]
    python -m serving.cli.client wait --timeout 180       # until the server's health is SERVING
    python -m serving.cli.client demo --users 3 -k 10 [--wait-for-last-event]
    python -m serving.cli.client --target 127.0.0.1:50061,127.0.0.1:50062 recommend --user 1m_10

``--target`` names one server or several replicas (comma-separated ``IP:port``, or one
``dns:///name:port``): calls go round robin over those that are SERVING, and a read that
meets UNAVAILABLE is tried again on another (``contracts/channel.py``, the service config a
frontend copies); ``wait`` waits until each address given is SERVING.

``demo`` picks the users of the newest records on Kafka ``events``; with
``--wait-for-last-event`` it first waits until the newest event is folded into that
user's vector in Redis (``ts`` of ``sr:uv:{user}``), then asks for recommendations.
Kafka, Redis and topic names come from the ``STREAMREC_SERVING_*`` settings. An item the
people the user follows acted on is followed by its social proof (and who may be named).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

import grpc
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contracts.catchup import read_to_end, topic_partitions
from contracts.channel import recommender_channel, recommender_target
from contracts.console import add_verbose_flag, setup_logging
from contracts.online import NEWEST_FIELD, RedisKeys
from contracts.security import async_redis_client, kafka_kwargs
from protos import events_pb2, recommender_pb2, recommender_pb2_grpc
from serving.settings import ServingSettings

_TAIL_PER_PARTITION = 200  # records read from the end of each partition of `events`


def _print_items(items: Sequence[recommender_pb2.ScoredItem]) -> None:
    if not items:
        print("    (no items)")
    for rank, item in enumerate(items, start=1):
        name = item.item_id if item.title in ("", item.item_id) else f"{item.item_id}  {item.title}"
        categories = f"  [{', '.join(item.categories)}]" if item.categories else ""
        print(f"{rank:>3}. {item.score:8.4f}  {name}{categories}  ({item.reason})")
        if item.social_proof:
            named = f"; named: {', '.join(item.social_user_ids)}" if item.social_user_ids else ""
            print(f"     {item.social_proof}  ({item.social_count} acted{named})")


async def recommend(stub: recommender_pb2_grpc.RecommenderStub, args: argparse.Namespace,
                    user_id: str) -> None:
    request = recommender_pb2.RecommendRequest(
        user_id=user_id, k=args.k, exclude_item_ids=args.exclude,
        include_categories=args.category, exclude_categories=args.not_category,
        exclude_social=args.no_social,
    )
    started = time.perf_counter()
    response = await stub.Recommend(request, timeout=args.deadline)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"user {user_id}: {response.strategy}, model {response.model_version}, "
          f"recommendation {response.recommendation_id} ({elapsed_ms:.1f} ms)")
    _print_items(response.items)


async def similar(stub: recommender_pb2_grpc.RecommenderStub, args: argparse.Namespace,
                  item_id: str) -> None:
    request = recommender_pb2.SimilarItemsRequest(item_id=item_id, k=args.k, user_id=args.user)
    response = await stub.SimilarItems(request, timeout=args.deadline)
    print(f"items similar to {item_id} (model {response.model_version}):")
    _print_items(response.items)


async def wait_serving(channel: grpc.aio.Channel, timeout_s: float) -> bool:
    """Poll the health service until it says SERVING; False after `timeout_s`."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return True
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.5)
    return False


async def newest_events(settings: ServingSettings, count: int) -> list[events_pb2.Event]:
    """The newest event of each of the `count` most recently active users on ``events``."""
    client_id = f"{settings.client_id}-client"
    partitions = await topic_partitions(settings.bootstrap_servers(), client_id, settings.topic_events,
                                        settings)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(), group_id=None,
        enable_auto_commit=False, client_id=client_id, **kafka_kwargs(settings),
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(starts[tp], ends[tp] - _TAIL_PER_PARTITION))
        events: list[events_pb2.Event] = []

        def decode(records: list[ConsumerRecord]) -> None:
            for record in records:
                try:
                    events.append(events_pb2.Event.FromString(record.value or b""))
                except DecodeError:
                    continue

        await read_to_end(consumer, partitions, decode)
    finally:
        await consumer.stop()
    newest: dict[str, events_pb2.Event] = {}
    for event in sorted(events, key=lambda e: e.timestamp_ms, reverse=True):
        if event.user_id and event.user_id not in newest:
            newest[event.user_id] = event
    return list(newest.values())[:count]


async def wait_folded(settings: ServingSettings, event: events_pb2.Event, timeout_s: float) -> bool:
    """Wait until the user's vector in Redis includes `event` (its ``ts`` reached)."""
    redis = async_redis_client(settings.redis_url, settings)
    key = RedisKeys(settings.redis_prefix).user_vector(event.user_id)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ts = await redis.hget(key, NEWEST_FIELD)
            if ts is not None and int(ts) >= event.timestamp_ms:
                return True
            await asyncio.sleep(0.05)
        return False
    finally:
        await redis.aclose()


async def demo(stub: recommender_pb2_grpc.RecommenderStub, args: argparse.Namespace) -> int:
    settings = ServingSettings()
    events = await newest_events(settings, args.users)
    if not events:
        print(f"no events on {settings.topic_events!r} yet", file=sys.stderr)
        return 1
    if args.wait_for_last_event:
        last = events[0]
        started = time.monotonic()
        if await wait_folded(settings, last, args.timeout):
            print(f"newest event (user {last.user_id}, item {last.item_id}) is in the user's "
                  f"vector (waited {time.monotonic() - started:.1f} s)")
        else:
            print(f"newest event of user {last.user_id} not in Redis after {args.timeout} s; "
                  "showing what the server has", file=sys.stderr)
    for event in events:
        print()
        await recommend(stub, args, event.user_id)
    print()
    item_id, deadline = events[0].item_id, time.monotonic() + args.timeout
    while True:  # the streams worker may still be embedding the catalog
        try:
            await similar(stub, args, item_id)
            return 0
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


def _target(text: str) -> str:
    """`--target` checked as a gRPC target of one or several replicas (kept as written)."""
    try:
        recommender_target(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _addresses(target: str) -> list[str]:
    return [address.strip() for address in target.split(",") if address.strip()]


async def wait_all_serving(target: str, timeout_s: float) -> bool:
    """Wait until every address of `target` is SERVING, each asked on its own channel."""
    deadline = time.monotonic() + timeout_s
    for address in _addresses(target):
        async with grpc.aio.insecure_channel(address) as channel:
            if not await wait_serving(channel, max(0.0, deadline - time.monotonic())):
                return False
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.cli.client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051", type=_target,
                        help="server host:port; several replicas as IP:port,IP:port or dns:///name:port")
    parser.add_argument("--deadline", type=float, default=5.0, help="seconds per call")
    add_verbose_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("recommend", help="recommendations for one user")
    rec.add_argument("--user", required=True)
    rec.add_argument("-k", type=int, default=10)
    rec.add_argument("--exclude", action="append", default=[], help="item id never returned")
    rec.add_argument("--category", action="append", default=[], help="only items in this category")
    rec.add_argument("--not-category", action="append", default=[], help="no items in this category")
    rec.add_argument("--no-social", action="store_true",
                     help="no candidates from what the people the user follows did")
    sim = commands.add_parser("similar", help="items similar to one item")
    sim.add_argument("--item", required=True)
    sim.add_argument("-k", type=int, default=10)
    sim.add_argument("--user", default="", help="show this user's social proof on the items")
    wait = commands.add_parser("wait", help="wait until the server is SERVING")
    wait.add_argument("--timeout", type=float, default=60.0)
    dem = commands.add_parser("demo", help="recommendations for the most recently active users")
    dem.add_argument("--users", type=int, default=3)
    dem.add_argument("-k", type=int, default=10)
    dem.add_argument("--wait-for-last-event", action="store_true")
    dem.add_argument("--timeout", type=float, default=60.0, help="longest wait for the last event")
    dem.set_defaults(exclude=[], category=[], not_category=[], no_social=False, user="")
    return parser


async def run(args: argparse.Namespace) -> int:
    if args.command == "wait":
        if await wait_all_serving(args.target, args.timeout):
            print(f"{args.target} is SERVING")
            return 0
        print(f"{args.target} is not SERVING after {args.timeout} s", file=sys.stderr)
        return 1
    async with recommender_channel(args.target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        try:
            if args.command == "recommend":
                await recommend(stub, args, args.user)
            elif args.command == "similar":
                await similar(stub, args, args.item)
            else:
                return await demo(stub, args)
        except grpc.aio.AioRpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
