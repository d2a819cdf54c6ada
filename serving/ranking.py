"""Turning ranked candidate lists into one answer: filter, dedupe, diversify, merge, backfill."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

REASON_PERSONAL = "similar to your recent activity"
REASON_TRENDING = "trending now"
REASON_POPULAR = "popular with other shoppers"
REASON_SIMILAR = "similar to this item"


class Candidate(NamedTuple):
    """An item proposed by one source, with that source's score and reason.

    A named tuple: tens are made per request, at a third of a frozen dataclass's cost.
    """

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
    sources: Iterable[Iterable[Candidate]],
    k: int,
    allows: Callable[[str], bool],
    *,
    max_per_group: int = 0,
    group: Callable[[str], str | None] | None = None,
) -> list[Candidate]:
    """The first `k` allowed candidates, taking sources in order (later ones backfill).

    Each item appears at most once: its first allowed occurrence wins. With
    `max_per_group` > 0 (diversity), at most that many items share a `group` (e.g. the
    first category); items without a group are not capped.
    """
    picked: list[Candidate] = []
    taken: set[str] = set()
    per_group: dict[str, int] = {}
    if k <= 0:
        return picked
    capped = max_per_group > 0 and group is not None
    for source in sources:
        for candidate in source:
            if candidate.item_id in taken or not allows(candidate.item_id):
                continue
            if capped:
                name = group(candidate.item_id)  # type: ignore[misc]
                if name is not None:
                    if per_group.get(name, 0) >= max_per_group:
                        continue
                    per_group[name] = per_group.get(name, 0) + 1
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
