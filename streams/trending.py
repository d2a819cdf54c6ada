"""Trending items: exponentially decayed interaction counts by event time, kept in Redis
with forward decay so no periodic pass over the scores is needed.

An event of weight ``w`` at event time ``t`` adds ``w * exp((t - base) / tau)`` to its
item's score in ``{prefix}trending:{window}``, where ``tau`` is the window's length and
``base`` (``{prefix}trending:{window}:base``, ms) is shared by every writer. All scores
share the factor ``exp(-(now - base) / tau)``, so ranking the raw scores ranks the decayed
counts ``sum(w * exp(-(now - t) / tau))`` at any ``now``; multiply by that factor to read
a count (``contracts.online.decayed``). When ``(t - base) / tau`` grows past :data:`REBASE_EXPONENT` the writer moves
``base`` to ``t`` and rescales every score in the same atomic script (float overflow
would come at about 700). Events far older than ``base`` add (almost) nothing, as they
would to a sliding window; a replay of old data into fresh keys starts its own base at
its first event.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from contracts.online import encode_base_ms

REBASE_EXPONENT = 64.0  # exp(64) ~ 6e27: far from overflow, rare enough to be free
DROP_BELOW = 1e-6  # decayed count under which a rebase drops an item
WINDOW_NAME = re.compile(r"^[0-9a-z]{1,16}$")

# KEYS: zset, base key. ARGV: tau_ms, ref_ms, rebase exponent, drop-below, cap, and a JSON
# list of item id and amount pairs, flat (amounts relative to ref_ms:
# w * exp((t - ref) / tau)). Numbers are passed with full precision (repr); Lua turns them
# into doubles. One JSON argument instead of two per item: the client packs every
# argument of a command in Python, and a batch touches thousands of items.
SCRIPT = """
local tau = tonumber(ARGV[1])
local ref = tonumber(ARGV[2])
local base = tonumber(redis.call('GET', KEYS[2]))
if not base then
  base = ref
  redis.call('SET', KEYS[2], ARGV[2])
elseif (ref - base) / tau > tonumber(ARGV[3]) then
  redis.call('ZUNIONSTORE', KEYS[1], 1, KEYS[1], 'WEIGHTS', string.format('%.17g', math.exp((base - ref) / tau)))
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
  base = ref
  redis.call('SET', KEYS[2], ARGV[2])
end
local scale = math.exp((ref - base) / tau)
local pairs = cjson.decode(ARGV[6])
for i = 1, #pairs, 2 do
  local amount = pairs[i + 1] * scale
  if amount > 0 then
    redis.call('ZINCRBY', KEYS[1], string.format('%.17g', amount), pairs[i])
  end
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[5]) + 1))
return tostring(base)
"""


@dataclass(frozen=True)
class Window:
    """A trending window: its name in the key and its decay time constant."""

    name: str
    tau_ms: float


def windows_from_settings(seconds_by_name: Mapping[str, float]) -> list[Window]:
    """``{"1h": 3600, ...}`` as windows; a bad name or length raises ValueError."""
    windows = []
    for name, seconds in seconds_by_name.items():
        if not WINDOW_NAME.match(name):
            raise ValueError(f"trending window name {name!r} must match {WINDOW_NAME.pattern}")
        if not seconds > 0:
            raise ValueError(f"trending window {name!r} must be longer than 0 s")
        windows.append(Window(name, seconds * 1000.0))
    return windows


def increments(
    touches: Iterable[tuple[str, int, float]], tau_ms: float
) -> tuple[int, dict[str, float]]:
    """``(ref_ms, item -> sum of w * exp((t - ref_ms) / tau))`` over ``(item, t, w)``
    with ``w > 0``; ``ref_ms`` is the newest event time, so every term is at most ``w``."""
    positive = [(item, t, w) for item, t, w in touches if w > 0]
    if not positive:
        return 0, {}
    ref = max(t for _, t, _ in positive)
    sums: dict[str, float] = {}
    for item, t, w in positive:
        sums[item] = sums.get(item, 0.0) + w * math.exp((t - ref) / tau_ms)
    return ref, sums


def script_args(
    tau_ms: float, ref_ms: int, amounts: Mapping[str, float], *, cap: int
) -> list[str]:
    """ARGV of :data:`SCRIPT`."""
    return [repr(float(tau_ms)), encode_base_ms(ref_ms), repr(REBASE_EXPONENT), repr(DROP_BELOW), str(cap),
            flat_pairs(amounts)]


def flat_pairs(amounts: Mapping[str, float]) -> str:
    """``{"a": 1.5, "b": 2.0}`` as the JSON list ``["a", 1.5, "b", 2.0]``."""
    flat: list[str | float] = []
    for item, amount in amounts.items():
        flat += (item, float(amount))
    return json.dumps(flat, separators=(",", ":"), allow_nan=False)


