"""The social graph and feed in Redis that streams writes and serving reads
(docs/contracts.md §3, keys in :class:`contracts.online.RedisKeys`).

- ``following:{user}`` and ``followers:{user}``: hashes of the user's edges, one field per
  other user, its value the :class:`EdgeFlags` of every kind of edge between the two.
- ``social:{user}``: the user's social feed, a sorted set of what the people they follow
  did. A member is ``{actor}|{event type}|{item}`` (:func:`feed_member`; ids escaped as in
  edge keys); its score is :func:`feed_score`, the log of the act's weight plus its time
  over the decay constant, so the highest scores are the strongest acts decayed to any
  common "now", no rewrite needed as time passes, and ``ZADD GT`` keeps an act's newest
  time. The feed is capped to its highest-scored members.
- ``hot``: a set of the accounts with more followers than the fan-out threshold. Their
  acts are not written into every follower's feed (fan-out on write); a follower's request
  reads them from the account's own ``acts:{type}:{user}`` sets (fan-in on read).

One request's social candidates are read by one server-side call
(:data:`READ_SOCIAL_SCRIPT`), which keeps only acts of people the user still follows, and
turned into items by :func:`social_items`. Serving's ranking and training's offline check
merge them with the model's candidates by the same rule, :func:`fuse`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from contracts.online import EVENT_TYPE_NUMBERS, RedisKeys
from contracts.relations import SEPARATOR, escape_id, unescape_id
from protos import events_pb2

DEFAULT_TAU_S = 7 * 24 * 3600.0  # decay constant of a social act's weight
DEFAULT_FEED_CAP = 500  # members kept in one user's social feed
DEFAULT_FANOUT_THRESHOLD = 10_000  # followers above which an account is read on demand
DEFAULT_SOCIAL_WEIGHT = 0.1  # of the social ranking in fuse (bench/README.md, "Social quality")
RRF_K = 60  # the rank offset of reciprocal-rank fusion (Cormack et al., 2009)

# How much an act says about the item, by event type. Clicks are left out: on their own
# they say little, and every view already counts.
DEFAULT_TYPE_WEIGHTS: dict[str, float] = {
    "view": 0.25, "add_to_cart": 1.0, "purchase": 3.0, "rating": 1.0,
}
# The type a reason names when several people did different things: the strongest first.
REASON_ORDER: tuple[int, ...] = (
    events_pb2.PURCHASE, events_pb2.ADD_TO_CART, events_pb2.RATING, events_pb2.VIEW,
    events_pb2.CLICK,
)

_NAMED_SHIFT = 8


class FeedFormatError(ValueError):
    """A feed member that is not ``{actor}|{type}|{item}``."""


@dataclass(frozen=True)
class EdgeFlags:
    """Every kind of edge between two users, and for which the followee may be named.
    Stored as one integer: bit ``kind - 1`` for an edge of that kind, bit ``8 + kind - 1``
    for its ``share_name``."""

    kinds: int = 0
    named: int = 0

    @classmethod
    def decode(cls, raw: bytes | str | int | None) -> EdgeFlags:
        value = int(raw) if raw is not None else 0
        return cls(value & 0xFF, (value >> _NAMED_SHIFT) & 0xFF)

    def encode(self) -> int:
        return self.kinds | (self.named << _NAMED_SHIFT)

    def with_edge(self, kind: int, *, share_name: bool) -> EdgeFlags:
        bit = _kind_bit(kind)
        return EdgeFlags(self.kinds | bit, (self.named | bit) if share_name else self.named & ~bit)

    def without_edge(self, kind: int) -> EdgeFlags:
        bit = _kind_bit(kind)
        return EdgeFlags(self.kinds & ~bit, self.named & ~bit)

    @property
    def related(self) -> bool:
        """Any edge left (else the hash field is deleted)."""
        return bool(self.kinds)

    @property
    def may_name(self) -> bool:
        """The followee may be named: some edge that exists allows it."""
        return bool(self.kinds & self.named)


def _kind_bit(kind: int) -> int:
    if not 1 <= kind <= 8:
        raise ValueError(f"relation kind {kind} has no flag bit (1..8)")
    return 1 << (kind - 1)


def feed_member(actor_id: str, event_type: int, item_id: str) -> str:
    """The feed member of `actor_id`'s act of `event_type` on `item_id`."""
    return SEPARATOR.join((escape_id(actor_id), str(int(event_type)), escape_id(item_id)))


def parse_member(member: bytes | str) -> tuple[str, int, str]:
    """``(actor, event type, item)`` of a feed member; :class:`FeedFormatError` else."""
    text = member.decode("utf-8", errors="replace") if isinstance(member, bytes) else member
    parts = text.split(SEPARATOR)
    if len(parts) != 3 or not parts[1].isdigit():
        raise FeedFormatError(f"{text[:80]!r} is not actor|type|item")
    return unescape_id(parts[0]), int(parts[1]), unescape_id(parts[2])


def feed_score(weight: float, timestamp_ms: float, tau_ms: float) -> float:
    """``ln(weight) + t / τ``: ordering by it orders by ``weight · exp(−(now − t) / τ)``
    for every `now`."""
    if weight <= 0:
        raise ValueError(f"a social act's weight is positive, not {weight}")
    return math.log(weight) + timestamp_ms / tau_ms


def decayed_log_weight(score: float, now_ms: float, tau_ms: float) -> float:
    """The log of a feed score's act weight decayed to `now_ms`: finite however old the
    act (its weight itself may be too small for a float). An act ahead of the clock,
    within the allowed skew, gains at most a bounded amount."""
    return min(score - now_ms / tau_ms, 50.0)


def decayed_weight(score: float, now_ms: float, tau_ms: float) -> float:
    """A feed score as the act's weight decayed to `now_ms` (0.0 once too small)."""
    return math.exp(decayed_log_weight(score, now_ms, tau_ms))


def type_weights(names: Mapping[str, float]) -> dict[int, float]:
    """Event-type names -> weights as ``EventType`` numbers; ValueError for an unknown
    name or a weight that is not positive (a type is left out by leaving it out)."""
    unknown = set(names) - set(EVENT_TYPE_NUMBERS)
    if unknown:
        raise ValueError(f"unknown event types {sorted(unknown)}; known: {list(EVENT_TYPE_NUMBERS)}")
    bad = {name: w for name, w in names.items() if not (w > 0 and math.isfinite(w))}
    if bad:
        raise ValueError(f"social weights are positive and finite, not {bad}")
    return {int(EVENT_TYPE_NUMBERS[name]): float(w) for name, w in names.items()}


@dataclass(frozen=True)
class Act:
    """One act of someone the user follows, the log of its weight decayed to the request's
    time (:func:`decayed_log_weight`): acts months old still order right."""

    actor_id: str
    event_type: int
    item_id: str
    log_weight: float

    @property
    def weight(self) -> float:
        return math.exp(self.log_weight)


@dataclass
class SocialItem:
    """An item some of the people the user follows acted on: the log of the sum of their
    decayed weights, and who did what (each actor once per type, strongest act first)."""

    item_id: str
    log_score: float = -math.inf
    actors: dict[int, list[str]] = field(default_factory=dict)
    named: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        """The summed decayed weight (0.0 when too small for a float)."""
        return math.exp(self.log_score)

    @property
    def count(self) -> int:
        """How many different people acted on it."""
        return len({actor for actors in self.actors.values() for actor in actors})

    @property
    def strongest(self) -> int:
        """The event type a reason names: the strongest that anyone did."""
        return next(t for t in REASON_ORDER if t in self.actors)


def social_items(acts: Iterable[Act], may_name: Mapping[str, bool]) -> list[SocialItem]:
    """Acts as items, best first (highest summed weight, then item id), summed in log
    space so that old acts keep their order."""
    items: dict[str, SocialItem] = {}
    for act in sorted(acts, key=lambda a: -a.log_weight):
        item = items.get(act.item_id)
        if item is None:
            item = items[act.item_id] = SocialItem(act.item_id)
        item.log_score = _log_add(item.log_score, act.log_weight)
        actors = item.actors.setdefault(act.event_type, [])
        if act.actor_id not in actors:
            actors.append(act.actor_id)
        if may_name.get(act.actor_id) and act.actor_id not in item.named:
            item.named.append(act.actor_id)
    return sorted(items.values(), key=lambda i: (-i.log_score, i.item_id))


def _log_add(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` without leaving the float range."""
    if a < b:
        a, b = b, a
    return a if b == -math.inf else a + math.log1p(math.exp(b - a))


def fuse(ranked: Sequence[str], social: Sequence[str], weight: float,
         k: int = RRF_K) -> list[tuple[str, float]]:
    """Weighted reciprocal-rank fusion of the model's ranking and the social one:
    ``1 / (k + rank) + weight / (k + social rank)`` (ranks from 1; an item absent from a
    list gets nothing from it), best first, ties in the model's order then the social
    one's. Rank fusion needs no common scale between a cosine and a decayed count."""
    scores: dict[str, float] = {}
    for rank, item_id in enumerate(ranked, start=1):
        scores.setdefault(item_id, 1.0 / (k + rank))
    if weight > 0:
        for rank, item_id in enumerate(social, start=1):
            scores[item_id] = scores.get(item_id, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


# One user's social candidates, read server side. ARGV (read_social_args): the following
# key, the feed key, the hot set key, the feed limit, the limit of hot followees read, the
# acts read per hot followee and type, the number of types n, then the head and tail and
# the number of each type's acts keys. Answers {feed, hot, flags}: the feed's members and
# scores (flat) whose actor the user still follows; for hot followees, followee, type,
# item and time (flat); each actor in either and their edge flags (flat).
READ_SOCIAL_SCRIPT = r"""
local following = redis.call('HGETALL', ARGV[1])
local flags = {}
local followees = {}
for i = 1, #following, 2 do
  flags[following[i]] = following[i + 1]
  followees[#followees + 1] = following[i]
end
local function unescape(text)
  return (string.gsub(string.gsub(text, '%%7C', '|'), '%%25', '%%'))
end
local shown = {}
local answer_flags = {}
local function note(actor)
  if not shown[actor] then
    shown[actor] = true
    answer_flags[#answer_flags + 1] = actor
    answer_flags[#answer_flags + 1] = flags[actor]
  end
end
local feed = {}
local feed_limit = tonumber(ARGV[4])
if feed_limit > 0 and #followees > 0 then
  local entries = redis.call('ZREVRANGE', ARGV[2], 0, feed_limit - 1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local bar = string.find(entries[i], '|', 1, true)
    if bar then
      local actor = unescape(string.sub(entries[i], 1, bar - 1))
      if flags[actor] then
        feed[#feed + 1] = entries[i]
        feed[#feed + 1] = entries[i + 1]
        note(actor)
      end
    end
  end
end
local hot = {}
local hot_limit, per_type, n_types = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if hot_limit > 0 and per_type > 0 and n_types > 0 and #followees > 0 then
  local read = 0
  for start = 1, #followees, 1000 do
    local chunk = {unpack(followees, start, math.min(start + 999, #followees))}
    local member = redis.call('SMISMEMBER', ARGV[3], unpack(chunk))
    for j = 1, #chunk do
      if member[j] == 1 and read < hot_limit then
        read = read + 1
        local followee = chunk[j]
        for t = 1, n_types do
          local base = 8 + 3 * (t - 1)
          local acts = redis.call('ZREVRANGE', ARGV[base] .. followee .. ARGV[base + 1], 0,
                                  per_type - 1, 'WITHSCORES')
          for a = 1, #acts, 2 do
            hot[#hot + 1] = followee
            hot[#hot + 1] = ARGV[base + 2]
            hot[#hot + 1] = acts[a]
            hot[#hot + 1] = acts[a + 1]
          end
        end
        note(followee)
      end
    end
  end
end
return {feed, hot, answer_flags}
"""


@dataclass(frozen=True)
class SocialReadLimits:
    """How much one request reads."""

    feed: int = 200  # feed members, highest first
    hot_followees: int = 50  # hot accounts the user follows, read on demand
    per_type: int = 20  # newest acts of each type per hot followee


def read_social_args(keys: RedisKeys, user_id: str, weights: Mapping[int, float],
                     limits: SocialReadLimits) -> list[str]:
    """The arguments of :data:`READ_SOCIAL_SCRIPT` for `user_id`, reading the acts of the
    types in `weights` (``EventType`` numbers) from hot followees."""
    args = [keys.following(user_id), keys.social(user_id), keys.hot(), str(limits.feed),
            str(limits.hot_followees), str(limits.per_type), str(len(weights))]
    for event_type in sorted(weights):
        args += [*keys.acts_sets[event_type], str(event_type)]
    return args


def parse_social_reply(reply: Sequence[Sequence[bytes | str | int]], *, now_ms: float,
                       tau_ms: float, weights: Mapping[int, float],
                       ) -> tuple[list[Act], dict[str, bool]]:
    """The script's answer as acts decayed to `now_ms` and who may be named. A feed member
    of another format or a type without a weight is skipped (written by another version)."""
    feed, hot, flags = reply
    acts: list[Act] = []
    for n in range(0, len(feed), 2):
        try:
            actor, event_type, item_id = parse_member(feed[n])  # type: ignore[arg-type]
        except FeedFormatError:
            continue
        if event_type in weights:
            acts.append(Act(actor, event_type, item_id,
                            decayed_log_weight(float(feed[n + 1]), now_ms, tau_ms)))
    for n in range(0, len(hot), 4):
        event_type = int(hot[n + 1])
        weight = weights.get(event_type)
        if weight is None:
            continue
        score = feed_score(weight, float(hot[n + 3]), tau_ms)
        acts.append(Act(_text(hot[n]), event_type, _text(hot[n + 2]),
                        decayed_log_weight(score, now_ms, tau_ms)))
    may_name = {_text(flags[n]): EdgeFlags.decode(flags[n + 1]).may_name
                for n in range(0, len(flags), 2)}
    return _newest_once(acts), may_name


def _newest_once(acts: list[Act]) -> list[Act]:
    """Each ``(actor, type, item)`` once, at its strongest: an account that became hot has
    its older acts in feeds and in its own acts sets both."""
    best: dict[tuple[str, int, str], Act] = {}
    for act in acts:
        key = (act.actor_id, act.event_type, act.item_id)
        if key not in best or act.log_weight > best[key].log_weight:
            best[key] = act
    return list(best.values()) if len(best) < len(acts) else acts


def _text(value: bytes | str | int) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

