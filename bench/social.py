"""Social freshness: from a followee's purchase produced to Kafka until their follower's
next ``Recommend`` answer shows the item with its social reason, through the real streams
worker (relations reader, fan-out on write), Redis and gRPC server.

    .venv/bin/python -m bench.social [--trials 200] [--background-rate 1000] [--followers 20]

Needs Kafka and Redis up (``make infra-up``). Starts a private stack (``bench/stack.py``),
publishes the MovieLens-1M catalog, then gives every background user ``--followers``
followers (relations produced to Kafka) so the background load fans out too. Per trial: a
fresh follower follows a fresh followee (``TrackRelations``), views one item (so it has a
personal answer), then at t0 the followee purchases the item ranked last in the
follower's answer (at the default social weight social acts lift what the model proposes
and give it its social proof);
Redis is polled until the act is in the follower's social feed (the streams part), and
``Recommend`` until the item is in the answer with a non-zero ``social_count`` (t1), and
its rank then is noted.
A background thread replays MovieLens-1M ratings as live views at ``--background-rate``.

Reference in the same run: the plain produce -> consume latency of one record through the
same broker (``bench.freshness.raw_kafka_latency``). Prints medians and the ratio; writes
``bench/results/social.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import redis
from kafka import KafkaProducer

from bench.freshness import Background, raw_kafka_latency, send_event, summary, wait_until
from bench.stack import LocalStack
from contracts.console import progress_bar
from contracts.online import RedisKeys
from contracts.relations import record_of
from contracts.social import feed_member
from ingest import movielens
from ingest.messages import item_records
from protos import events_pb2, recommender_pb2, recommender_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"


def follow_background(producer: KafkaProducer, topic: str, users: list[str], followers: int,
                      rng: random.Random) -> int:
    """Every background user gets `followers` followers among the others; returns the
    number of edges produced."""
    now = int(time.time() * 1000)
    edges = 0
    for n, user in enumerate(users):
        others = users[:n] + users[n + 1:]
        for follower in rng.sample(others, min(followers, len(others))):
            relation = events_pb2.Relation(follower_id=f"bg-{follower}", followee_id=f"bg-{user}",
                                           kind=events_pb2.FOLLOW, timestamp_ms=now)
            key, value = record_of(relation)
            producer.send(topic, key=key, value=value)
            edges += 1
    producer.flush()
    return edges


def purchase(producer: KafkaProducer, topic: str, user_id: str, item_id: str) -> None:
    event = events_pb2.Event(event_id=uuid.uuid4().hex, user_id=user_id, item_id=item_id,
                             type=events_pb2.PURCHASE, timestamp_ms=int(time.time() * 1000))
    producer.send(topic, key=user_id.encode(), value=event.SerializeToString())
    producer.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--background-rate", type=float, default=1000.0, help="events/s")
    parser.add_argument("--followers", type=int, default=20,
                        help="followers of every background user (their views fan out)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    dataset = movielens.load()
    items = dataset.items
    ratings = dataset.interactions
    background_pairs = list(zip(ratings["user_id"].head(200_000), ratings["item_id"].head(200_000),
                                strict=True))
    background_users = sorted({user for user, _ in background_pairs})
    item_ids = list(items["item_id"])
    rng = random.Random(11)

    print("reference: raw Kafka produce -> consume latency ...")
    raw = raw_kafka_latency(args.kafka, args.trials)

    with tempfile.TemporaryDirectory(prefix="bench-social-") as workdir:
        stack = LocalStack(kafka=args.kafka, redis_url=args.redis, workdir=Path(workdir))
        producer = KafkaProducer(bootstrap_servers=args.kafka, acks="all", linger_ms=0)
        background: Background | None = None
        try:
            started = time.monotonic()
            stack.start()
            for key, value in item_records(items, int(time.time() * 1000)):
                producer.send(stack.topics["items"], key=key.encode(), value=value)
            producer.flush()
            edges = follow_background(producer, stack.topics["relations"], background_users,
                                      args.followers, rng)
            channel = grpc.insecure_channel(f"127.0.0.1:{stack.port}")
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            client = redis.Redis.from_url(args.redis)
            keys = RedisKeys(stack.redis_prefix)

            def has_vector(item_id: str) -> bool:
                try:
                    stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id=item_id, k=1))
                except grpc.RpcError:
                    return False
                return True

            print(f"embedding {len(item_ids)} catalog items, {edges} background edges ...")
            wait_until(lambda: has_vector(item_ids[-1]), 600, "the catalog's vectors", stack)
            last = background_users[-1]
            wait_until(lambda: client.hlen(keys.followers(f"bg-{last}")) > 0, 300,
                       "the background edges", stack)
            print(f"stack ready in {time.monotonic() - started:.0f} s")
            if args.background_rate > 0:
                background = Background(args.kafka, stack.topics["events"], background_pairs,
                                        args.background_rate)
                background.start()

            def recommend(user: str, k: int = args.k) -> recommender_pb2.RecommendResponse:
                return stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=k),
                                      timeout=5)

            def in_feed(follower: str, member: str) -> bool:
                deadline = time.monotonic() + 30
                while client.zscore(keys.social(follower), member) is None:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.0002)
                return True

            samples, streams_samples, strategies, ranks = [], [], [], []
            for trial in progress_bar(range(args.trials), desc="social freshness trials"):
                follower = f"sf-{stack.suffix}-{trial}"
                followee = f"se-{stack.suffix}-{trial}"
                stub.TrackRelations(recommender_pb2.TrackRelationsRequest(relations=[
                    events_pb2.Relation(follower_id=follower, followee_id=followee,
                                        kind=events_pb2.FOLLOW, share_name=True,
                                        timestamp_ms=int(time.time() * 1000))]), timeout=5)
                wait_until(lambda f=follower, e=followee: client.hexists(keys.following(f), e),
                           30, "the edge in Redis", stack)
                send_event(producer, stack.topics["events"], follower, rng.choice(item_ids))
                first = wait_until(
                    lambda u=follower: (r := recommend(u)).strategy.startswith(
                        "personal") and len(r.items) == args.k and r, 30,
                    "a personal answer", stack)
                # The answer's last item: at the default social weight a purchase by someone
                # followed lifts an item the model proposes and gives it its social proof;
                # it does not pull in one the model does not (bench/README.md, "Social
                # quality").
                target = first.items[-1].item_id
                t0 = time.perf_counter()
                purchase(producer, stack.topics["events"], followee, target)
                if not in_feed(follower, feed_member(followee, events_pb2.PURCHASE, target)):
                    raise RuntimeError(f"the purchase is not in the feed after 30 s:\n"
                                       f"{stack.streams.log_tail()}")
                streams_samples.append((time.perf_counter() - t0) * 1000)

                def social_answer(u: str = follower, t: str = target):  # type: ignore[no-untyped-def]
                    answer = recommend(u)
                    hit = next((i for i in answer.items if i.item_id == t and i.social_count), None)
                    return (answer, hit) if hit else None

                answer, hit = wait_until(social_answer, 30, "the social answer", stack)
                samples.append((time.perf_counter() - t0) * 1000)
                strategies.append(answer.strategy)
                ranks.append([i.item_id for i in answer.items].index(target) + 1)
                if trial == 0:
                    print(f"example: {follower} <- {hit.item_id} {hit.reason!r} "
                          f"({hit.social_proof!r}), strategy {answer.strategy}")
            channel.close()
            client.close()
        finally:
            if background is not None:
                background.stop()
            producer.close()
            stack.stop()
            stack.delete_state()

    seconds = (background.sent / args.background_rate) if background else 0.0
    result = {
        "social_freshness_ms": summary(samples),
        "produce_to_feed_ms": summary(streams_samples),
        "raw_kafka_ms": summary(raw),
        "ratio_p50": round(statistics.median(samples) / statistics.median(raw), 2),
        "background_events_per_s": args.background_rate,
        "background_events_sent": background.sent if background else 0,
        "background_users": len(background_users),
        "followers_per_background_user": args.followers,
        "background_edges": edges,
        "fanout_feed_writes_per_s": round(args.background_rate * args.followers, 1),
        "background_seconds": round(seconds, 1),
        "strategies": sorted(set(strategies)),
        "rank_before": args.k,
        "rank_after_median": statistics.median(ranks) if ranks else None,
        "catalog_items": len(item_ids),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "social.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
