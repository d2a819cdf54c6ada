"""Online writes on a Redis Cluster: a batch's effects split by hash slot, each slot's share
applied by one script that checks and moves that slot's *fence*.

A cluster runs a transaction or a script on the keys of one slot only, so the one
transaction per batch of :mod:`streams.online` (every user's keys plus the applied offsets
``applied:{group}``) cannot be. Instead each slot a batch touches has a fence, the hash
``fence:{tag}:{group}`` whose hash tag (``contracts.online.slot_tags``) puts it in that
slot: field ``{topic}:{partition}`` -> the newest offset whose effects *in that slot* are
applied. A record's effect on a slot applies iff its offset is above the slot's fence for
its partition, and the check, the effects and the fence's move are one script
(:data:`SLOT_SCRIPT`), so a zombie owner cannot apply twice what the new owner applied, and
a replay after a crash skips, slot by slot, what was applied before the crash.

The script gets, besides the effects, the fence values the writer believes (a cache of
what it last read or wrote): when one differs, it applies nothing and answers the fence,
and the writer computes that slot's share again. A writer that starts with an empty cache
pays one such round per slot once; afterwards a batch costs one script per slot it
touches, pipelined per node (redis-py's cluster pipeline sends each node's share at once).

The effects are the single-Redis scripts themselves (``touch``, ``popular``, ``trending``,
``expire``, :mod:`streams.online`), each wrapped as a Lua function of its own keys and
arguments, plus ``hset`` (a user vector) and ``del`` (a user's deletion).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError

log = logging.getLogger(__name__)

# Newest applied offsets remembered per partition with their time (one per batch), for
# where a read-back of lost records starts in the log; a loss older than the last
# MOVES_KEPT batches is read back from the log's start.
MOVES_KEPT = 10_000

HSET_FUNCTION = "redis.call('HSET', KEYS[1], unpack(ARGV))\nreturn 1"
DEL_FUNCTION = "return redis.call('DEL', unpack(KEYS))"

# KEYS[1]: the slot's fence, then the keys of every call in order. ARGV[1]: a JSON list of
# checks ``[field, offset believed (-1: none), new offset (decimal string)], ...``; then
# per call its function's name, its number of keys, its number of arguments and those
# arguments. Answers {1} when applied, {0, the fence's fields and values} when a fence
# differs from what the writer believed (nothing applied).
SLOT_SCRIPT_BODY = """
local fence = KEYS[1]
local checks = cjson.decode(ARGV[1])
for i = 1, #checks, 3 do
  local held = tonumber(redis.call('HGET', fence, checks[i]) or '-1')
  if held ~= checks[i + 1] then
    return {0, redis.call('HGETALL', fence)}
  end
end
local k, a = 2, 2
while a <= #ARGV do
  local name, n_keys, n_args = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local keys, args = {}, {}
  for i = 1, n_keys do
    keys[i] = KEYS[k + i - 1]
  end
  for i = 1, n_args do
    args[i] = ARGV[a + 2 + i]
  end
  FUNCTIONS[name](keys, args)
  k, a = k + n_keys, a + 3 + n_args
end
for i = 1, #checks, 3 do
  if tonumber(checks[i + 2]) > checks[i + 1] then
    redis.call('HSET', fence, checks[i], checks[i + 2])
  end
end
return {1}
"""


def slot_script(functions: Mapping[str, str]) -> str:
    """:data:`SLOT_SCRIPT_BODY` with each of `functions` (name -> a script's text, which
    reads its ``KEYS`` and ``ARGV``) as a Lua function of its keys and arguments, and the
    ``hset`` and ``del`` functions."""
    every = {**functions, "hset": HSET_FUNCTION, "del": DEL_FUNCTION}
    for name in every:
        if not name.isidentifier():
            raise ValueError(f"a slot function's name is a Lua name, not {name!r}")
    parts = [f"local function {name}(KEYS, ARGV)\n{body.strip()}\nend\n"
             for name, body in every.items()]
    table = ", ".join(f"{name} = {name}" for name in every)
    return "".join(parts) + f"local FUNCTIONS = {{{table}}}\n" + SLOT_SCRIPT_BODY


class Call(NamedTuple):
    """One effect: a function of :func:`slot_script` (a script's name on a single Redis)
    on its keys with its arguments."""

    name: str
    keys: list[str]
    args: list[Any]


@dataclass
class Share:
    """What a batch does in one slot: the fence checks ``(partition, believed, new)``, the
    calls, and how many of the batch's records it applies (counted for the caller)."""

    slot: int
    checks: list[tuple[int, int, int]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    fresh: int = 0


def parse_offsets(fields: Mapping[bytes | str, bytes | str], topic: str) -> dict[int, int]:
    """``{topic}:{partition}`` -> offset fields of `topic` as partition -> offset (the
    layout of the applied-offset hash and of every fence)."""
    offsets = {}
    for raw, offset in fields.items():
        name = raw.decode() if isinstance(raw, bytes) else raw
        source, _, partition = name.rpartition(":")
        if source == topic:
            offsets[int(partition)] = int(offset)
    return offsets


class SlotWriter:
    """Applies :class:`Share` s to a cluster, each with :func:`slot_script` in its slot,
    and keeps what it knows of each slot's fence (partition -> offset)."""

    def __init__(self, client: Any, *, functions: Mapping[str, str], topic: str,
                 fence_key: Any) -> None:
        self._client = client
        self.script = slot_script(functions)
        self._sha = hashlib.sha1(self.script.encode()).hexdigest()
        self._topic = topic
        self._fence_key = fence_key  # slot -> the fence's key
        self.fences: dict[int, dict[int, int]] = {}
        self.regressed: dict[int, int] = {}  # partition -> offset to read again from
        # slot -> partition -> (first, newest) offset whose effects in the slot were lost
        self.lost: dict[int, dict[int, tuple[int, int]]] = {}
        # partition -> (newest offset, wall ms before it was applied) of each applied
        # share, oldest first; and the newest offset that fell out of it
        self._moves: dict[int, deque[tuple[int, int]]] = {}
        self._forgotten: dict[int, int] = {}
        # A write failed: a master may have failed over, so every fence this writer
        # knows is read again (:meth:`verify`) before the next write.
        self.suspect = False

    def _note_regressions(self, slot: int, held: Mapping[int, int]) -> bool:
        """A fence below what this writer applied: the slot's master died before its
        replica had those writes. Their records must be applied again in this slot:
        :attr:`lost` keeps their offsets per slot and partition until taken
        (:meth:`take_lost`), :attr:`regressed` per partition the lowest offset lost.
        Whether any went back (callers log one line for all the slots)."""
        went_back = False
        for partition, believed in self.fences.get(slot, {}).items():
            now = held.get(partition, -1)
            if now < believed:
                went_back = True
                log.debug("slot %s's fence of partition %s went back from %s to %s", slot,
                          partition, believed, now)
                self.regressed[partition] = min(self.regressed.get(partition, now + 1), now + 1)
                spans = self.lost.setdefault(slot, {})
                first, newest = spans.get(partition, (now + 1, believed))
                spans[partition] = (min(first, now + 1), max(newest, believed))
        return went_back

    def take_lost(self, slots: set[int]) -> dict[int, tuple[int, int]]:
        """The lost offsets of `slots` per partition, merged, no longer kept."""
        merged: dict[int, tuple[int, int]] = {}
        for slot in sorted(slots & set(self.lost)):
            for partition, (first, newest) in self.lost.pop(slot).items():
                was = merged.get(partition, (first, newest))
                merged[partition] = (min(was[0], first), max(was[1], newest))
        return merged

    def first_applied_ms(self, partition: int, offset: int) -> int:
        """Wall time (ms) just before this writer first applied an offset at or above
        `offset` of `partition`; 0 when it no longer remembers (or never did)."""
        moves = self._moves.get(partition)
        if not moves or offset <= self._forgotten.get(partition, -1):
            return 0
        at = bisect.bisect_left(moves, (offset, -1))
        return moves[at][1] if at < len(moves) else 0

    def _moved(self, partition: int, offset: int, at_ms: int) -> None:
        moves = self._moves.setdefault(partition, deque())
        if moves and moves[-1][0] >= offset:
            return
        if len(moves) >= MOVES_KEPT:
            self._forgotten[partition] = moves.popleft()[0]
        moves.append((offset, at_ms))

    async def verify(self) -> set[int]:
        """Read every fence this writer knows again (pipelined per node) and take them as
        they are; the slots whose fence went back, their lost offsets noted. A slot that
        no later batch touches would otherwise keep its loss unseen."""
        slots = sorted(self.fences)
        async with self._client.pipeline(transaction=False) as pipe:
            for slot in slots:
                pipe.hgetall(self._fence_key(slot))
            replies = await pipe.execute()
        went_back = set()
        for slot, raw in zip(slots, replies, strict=True):
            held = parse_offsets(raw, self._topic)
            if self._note_regressions(slot, held):
                went_back.add(slot)
            self.fences[slot] = held
        self.suspect = False
        _warn_lost(went_back, "after a failed write")
        return went_back

    def fence(self, slot: int) -> dict[int, int]:
        """What the writer believes of the slot's fence (empty: none)."""
        return self.fences.get(slot, {})

    def _command(self, share: Share) -> list[Any]:
        checks: list[Any] = []
        for partition, believed, new in share.checks:
            checks += (f"{self._topic}:{partition}", believed, str(new))
        keys: list[Any] = [self._fence_key(share.slot)]
        args: list[Any] = [json.dumps(checks, separators=(",", ":"))]
        for call in share.calls:
            keys += call.keys
            args += (call.name, len(call.keys), len(call.args), *call.args)
        return [self._sha, len(keys), *keys, *args]

    async def apply(self, shares: Sequence[Share]) -> tuple[int, set[int]]:
        """Apply `shares` (one per slot); ``(records applied, slots whose fence was not as
        believed)``: those applied nothing, and the writer now knows their fence. Raises
        the first Redis error after taking in every answer that came."""
        applied, stale, went_back = 0, set(), set()
        pending = list(shares)
        sent_ms = int(time.time() * 1000)
        while pending:
            async with self._client.pipeline(transaction=False) as pipe:
                for share in pending:
                    # EVALSHA itself: the cluster pipeline blocks its evalsha method
                    pipe.execute_command("EVALSHA", *self._command(share))
                replies = await pipe.execute(raise_on_error=False)
            unknown, error = [], None
            for share, reply in zip(pending, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    unknown.append(share)
                elif isinstance(reply, Exception):
                    error = error or reply
                elif int(reply[0]) == 1:
                    fence = self.fences.setdefault(share.slot, {})
                    for partition, _, new in share.checks:
                        fence[partition] = max(fence.get(partition, -1), new)
                        self._moved(partition, new, sent_ms)
                    applied += share.fresh
                else:
                    raw = reply[1]
                    held = parse_offsets(dict(zip(raw[::2], raw[1::2], strict=True)), self._topic)
                    if self._note_regressions(share.slot, held):
                        went_back.add(share.slot)
                    self.fences[share.slot] = held
                    stale.add(share.slot)
            if error is not None:
                raise error
            if unknown:  # a node that never saw the script (new, or a promoted replica)
                await self._client.script_load(self.script)
            pending = unknown
        _warn_lost(went_back, "in a write")
        return applied, stale


def _warn_lost(slots: set[int], when: str) -> None:
    if slots:
        log.warning("the fences of %s slots went back %s (writes lost with a failed master): "
                    "their records above the fences are to be applied again", len(slots), when)
