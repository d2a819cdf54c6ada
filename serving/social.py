"""The social candidate source: what the people a user follows did, read from Redis in
one round trip per request (``contracts/social.py``'s script, per user of a batch), as
ranked candidates with reasons a shop can show, fused with the model's ranking.

A read that fails (Redis down, a key of the wrong type, a reply that does not parse) is
logged and counted, and the request is answered without social candidates: the social
source never fails a call the rest of the service could answer.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from contracts.online import RedisKeys
from contracts.social import (
    DEFAULT_SOCIAL_WEIGHT,
    DEFAULT_TAU_S,
    DEFAULT_TYPE_WEIGHTS,
    READ_SOCIAL_SCRIPT,
    RRF_K,
    SocialItem,
    SocialReadLimits,
    fuse,
    parse_social_reply,
    read_social_args,
    social_items,
    type_weights,
)
from protos import events_pb2
from serving import cluster
from serving.metrics import Metrics
from serving.online import bulk, send_packed
from serving.ranking import Candidate

log = logging.getLogger(__name__)

# What people did, by event type: as a reason ("bought by …") and as proof ("… bought this").
_DID: dict[int, tuple[str, str]] = {
    events_pb2.PURCHASE: ("bought by", "bought this"),
    events_pb2.ADD_TO_CART: ("added to cart by", "added this to their cart"),
    events_pb2.RATING: ("rated by", "rated this"),
    events_pb2.VIEW: ("viewed by", "viewed this"),
    events_pb2.CLICK: ("clicked by", "clicked this"),
}
MAX_NAMES = 2  # names in one sentence; the rest are counted
# The reason of a social candidate until it is shown: only shown items are put in words.
REASON_SOCIAL = "by people you follow"


@dataclass(frozen=True)
class SocialTuning:
    """The social source's knobs (from settings; the contract's defaults, which the
    streams worker writes the feeds with)."""

    weight: float = DEFAULT_SOCIAL_WEIGHT  # of the social ranking in the fusion; 0: off
    tau_s: float = DEFAULT_TAU_S
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    limits: SocialReadLimits = SocialReadLimits()


@dataclass(frozen=True)
class Social:
    """One user's social items, best first, and the same by item id."""

    items: list[SocialItem]
    by_id: dict[str, SocialItem]

    @classmethod
    def of(cls, items: list[SocialItem]) -> Social:
        return cls(items, {item.item_id: item for item in items})


NO_SOCIAL = Social([], {})


def _people(count: int) -> str:
    return "1 person you follow" if count == 1 else f"{count} people you follow"


def _who(item: SocialItem) -> str:
    """Who did the item's strongest act: up to MAX_NAMES of those who may be named, the
    rest counted ("ann", "ann and bob", "ann and 2 more people you follow", "3 people
    you follow")."""
    doers = item.actors[item.strongest]
    allowed = set(item.named)
    names = [actor for actor in doers if actor in allowed][:MAX_NAMES]
    others = len(doers) - len(names)
    if not names:
        return _people(others)
    if not others:
        return names[0] if len(names) == 1 else f"{names[0]} and {names[1]}"
    more = "1 more person you follow" if others == 1 else f"{others} more people you follow"
    return f"{', '.join(names)} and {more}"


def social_reason(item: SocialItem) -> str:
    """Why a social result is shown: "bought by 3 people you follow", "bought by ann and
    2 more people you follow" (the strongest type anyone did, and who did it)."""
    return f"{_DID[item.strongest][0]} {_who(item)}"


def social_proof(item: SocialItem) -> str:
    """The proof on any item the people a user follows acted on: "2 people you follow
    bought this", "ann bought this"."""
    return f"{_who(item)} {_DID[item.strongest][1]}"


def social_candidates(items: Sequence[SocialItem]) -> list[Candidate]:
    """The social ranking as candidates: its summed decayed weight as the score, the
    reason :data:`REASON_SOCIAL` (:func:`social_reason` once shown)."""
    return [Candidate(item.item_id, item.score, REASON_SOCIAL) for item in items]


def fused(personal: Sequence[Candidate], social: Sequence[Candidate],
          weight: float) -> list[Candidate]:
    """Both rankings in the order of :func:`contracts.social.fuse`; an item in both keeps
    the candidate (reason and score) of the ranking whose share of its fused score is the
    larger, the social one on a tie."""
    model_rank = {c.item_id: (rank, c) for rank, c in enumerate(personal, start=1)}
    social_rank = {c.item_id: (rank, c) for rank, c in enumerate(social, start=1)}
    order = fuse([c.item_id for c in personal], [c.item_id for c in social], weight)
    answer: list[Candidate] = []
    for item_id, _ in order:
        mine, theirs = model_rank.get(item_id), social_rank.get(item_id)
        if theirs is None:
            answer.append(mine[1])  # type: ignore[index]
        elif mine is None or weight / (RRF_K + theirs[0]) >= 1.0 / (RRF_K + mine[0]):
            answer.append(theirs[1])
        else:
            answer.append(mine[1])
    return answer


class SocialGraph:
    """Reads users' social candidates: one script call per user, all of a batch's calls
    sent together (one round trip), each packed once up to its two user keys. On a Redis
    Cluster the read is split by slot and merged into the same reply
    (serving.cluster.read_social)."""

    def __init__(self, client: Redis, *, prefix: str, tuning: SocialTuning,
                 metrics: Metrics | None = None) -> None:
        self._client = client
        self._keys = RedisKeys(prefix)
        self._tuning = tuning
        self._weights = type_weights(tuning.type_weights)
        self._tau_ms = tuning.tau_s * 1000.0
        self._metrics = metrics
        sha = hashlib.sha1(READ_SOCIAL_SCRIPT.encode()).hexdigest().encode()
        # read_social_args: the user's following and feed keys, then what every user shares.
        shared = read_social_args(self._keys, "", self._weights, tuning.limits)[2:]
        self._words = 3 + 2 + len(shared)
        self._head = b"".join(map(bulk, (b"EVALSHA", sha, b"0")))
        self._tail = b"".join(bulk(word.encode()) for word in shared)

    @property
    def weight(self) -> float:
        return self._tuning.weight

    @property
    def on(self) -> bool:
        """Whether the source runs at all (a weight of 0 turns it off server-wide)."""
        return self._tuning.weight > 0

    async def read(self, user_ids: Sequence[str]) -> list[Social]:
        """Each user's social items, best first; none for any of them when the read fails
        (logged and counted: the caller answers without them)."""
        started = time.perf_counter()
        try:
            replies = await self._replies(user_ids)
            now_ms = time.time() * 1000
            answers = [self._social(reply, now_ms) for reply in replies]
        except (*cluster.STORE_ERRORS, ValueError, TypeError, IndexError) as error:
            log.warning("social read of %s users failed (%s: %s); answering without social "
                        "candidates", len(user_ids), type(error).__name__, error)
            if self._metrics is not None:
                self._metrics.social_errors.inc()
            return [NO_SOCIAL] * len(user_ids)
        finally:
            if self._metrics is not None:
                self._metrics.social_read.observe(time.perf_counter() - started)
        return answers

    def shown(self, method: str, results: int, proofs: int) -> None:
        """Count the items an answer showed: `results` the social source placed, `proofs`
        carrying social proof (those included)."""
        if self._metrics is not None:
            if results:
                self._metrics.social_items.labels(method, "result").inc(results)
            if proofs:
                self._metrics.social_items.labels(method, "proof").inc(proofs)

    def _social(self, reply: Any, now_ms: float) -> Social:
        acts, may_name = parse_social_reply(reply, now_ms=now_ms, tau_ms=self._tau_ms,
                                            weights=self._weights)
        return Social.of(social_items(acts, may_name)) if acts else NO_SOCIAL

    async def _replies(self, user_ids: Sequence[str]) -> list[Any]:
        keys = self._keys
        if cluster.is_cluster(self._client):
            return await cluster.read_social(self._client, keys, user_ids,  # type: ignore[arg-type]
                                             self._weights, self._tuning.limits)
        packed = b"".join(
            b"*%d\r\n%s%s%s%s" % (self._words, self._head,
                                  bulk(keys.following(user_id).encode()),
                                  bulk(keys.social(user_id).encode()), self._tail)
            for user_id in user_ids
        )
        replies = await send_packed(self._client, packed, len(user_ids))
        if any(isinstance(reply, NoScriptError) for reply in replies):
            await self._client.script_load(READ_SOCIAL_SCRIPT)  # a restarted or flushed Redis
            replies = await send_packed(self._client, packed, len(user_ids))
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies
