"""Turning ranked candidate lists into one answer: filter, dedupe, merge, backfill."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

REASON_PERSONAL = "similar to your recent activity"
REASON_POPULAR = "popular now"
REASON_SIMILAR = "similar to this item"


@dataclass(frozen=True)
class Candidate:
    """An item proposed by one source, with that source's score and reason."""

    item_id: str
    score: float
    reason: str


def candidates(
    item_ids: Sequence[str], scores: Iterable[float], reason: str
) -> Iterator[Candidate]:
    """Pair ranked ids with their scores, keeping the order (lazily: merge stops at k)."""
    for item_id, score in zip(item_ids, scores, strict=True):
        yield Candidate(item_id, float(score), reason)


def merge(
    sources: Iterable[Iterable[Candidate]], k: int, allows: Callable[[str], bool]
) -> list[Candidate]:
    """The first `k` allowed candidates, taking sources in order (later ones backfill).

    Each item appears at most once: its first allowed occurrence wins.
    """
    picked: list[Candidate] = []
    taken: set[str] = set()
    if k <= 0:
        return picked
    for source in sources:
        for candidate in source:
            if candidate.item_id in taken or not allows(candidate.item_id):
                continue
            picked.append(candidate)
            taken.add(candidate.item_id)
            if len(picked) == k:
                return picked
    return picked


def first_window(k: int, n_excluded: int, margin: int, limit: int) -> int:
    """How many candidates to fetch first: enough for `k` after every exclusion hits."""
    return max(1, min(k + n_excluded + margin, limit))


def next_window(window: int, limit: int) -> int | None:
    """A wider window after filters left too few, or None when `limit` is reached."""
    if window >= limit:
        return None
    return min(window * 4, limit)
