"""When to send each event of a replay: pure functions of the event timestamps."""

from __future__ import annotations

import numpy as np

from ingest.errors import ReplayOptionError


def delays(
    timestamps_ms: np.ndarray,
    *,
    speedup: float,
    max_gap_s: float,
    rate: float | None = None,
) -> np.ndarray:
    """Seconds to wait before each event, counted from the event before it.

    The first event goes at once. A later one waits for its time gap divided by
    `speedup`, capped at `max_gap_s`; `speedup` 0 means no waiting for time gaps.
    `rate` (events per second) makes every wait at least ``1 / rate``.
    """
    if speedup < 0:
        raise ReplayOptionError(f"--speedup must be >= 0, got {speedup}")
    if max_gap_s < 0:
        raise ReplayOptionError(f"--max-gap-s must be >= 0, got {max_gap_s}")
    if rate is not None and rate <= 0:
        raise ReplayOptionError(f"--rate must be > 0 events/s, got {rate}")
    count = len(timestamps_ms)
    waits = np.zeros(count, dtype=np.float64)
    if count < 2:
        return waits
    if speedup > 0:
        gaps_s = np.diff(np.asarray(timestamps_ms, dtype=np.float64)) / 1000.0
        waits[1:] = np.minimum(np.maximum(gaps_s, 0.0) / speedup, max_gap_s)
    if rate is not None:
        waits[1:] = np.maximum(waits[1:], 1.0 / rate)
    return waits


def schedule(waits: np.ndarray) -> np.ndarray:
    """Send time of each event in seconds after the start (cumulative waits), so
    sleeping until each mark does not accumulate drift."""
    return np.cumsum(waits)


def is_paced(speedup: float, rate: float | None) -> bool:
    """Whether a replay waits at all."""
    return speedup > 0 or rate is not None
