"""Answers ``Recommend`` and ``SimilarItems`` from the index, the catalog and Redis.

Personal: the user's vector (only if it is of the serving model version) searched in
the index, with a window wide enough for k after exclusions, widened while filters
leave fewer than k; then popular items backfill. Without a usable vector: popular items.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.catalog import Catalog
from serving.errors import ItemNotFound
from serving.filters import Filters
from serving.index import ItemIndex
from serving.online import OnlineStore
from serving.ranking import (
    REASON_PERSONAL,
    REASON_POPULAR,
    REASON_SIMILAR,
    Candidate,
    candidates,
    first_window,
    merge,
    next_window,
)
from serving.requests import RecommendQuery, SimilarQuery

STRATEGY_PERSONAL = "personal"
STRATEGY_POPULAR = "popular"


@dataclass(frozen=True)
class Shown:
    """One returned item with its display fields."""

    item_id: str
    score: float
    reason: str
    title: str
    categories: tuple[str, ...]


@dataclass(frozen=True)
class Recommendation:
    """The answer to one ``Recommend`` call."""

    items: list[Shown]
    model_version: str
    recommendation_id: str
    strategy: str


class Recommender:
    """Candidate generation, filtering and backfill over one model version's index."""

    def __init__(
        self,
        *,
        index: ItemIndex,
        catalog: Catalog,
        store: OnlineStore,
        model_version: str,
        candidate_margin: int,
        max_candidates: int,
    ) -> None:
        self.index = index
        self.catalog = catalog
        self.model_version = model_version
        self._store = store
        self._margin = candidate_margin
        self._max_candidates = max_candidates

    async def recommend(self, query: RecommendQuery) -> Recommendation:
        """Up to k items for the user: nearest to the user's vector, then popular ones."""
        state = await self._store.user(query.user_id)
        filters = Filters(
            excluded=query.exclude_item_ids | frozenset(state.seen),
            include_categories=query.include_categories,
            exclude_categories=query.exclude_categories,
        )
        allows = self._allows(filters)
        personal: list[Candidate] = []
        if state.vector is not None and state.version == self.model_version:
            personal = self._nearest(state.vector, query.k, allows, len(filters.excluded))
        picked = personal
        if len(picked) < query.k:
            picked = await self._backfill(personal, query.k, allows, len(filters.excluded))
        return Recommendation(
            items=[self._shown(candidate) for candidate in picked],
            model_version=self.model_version,
            recommendation_id=uuid.uuid4().hex,
            strategy=STRATEGY_PERSONAL if personal else STRATEGY_POPULAR,
        )

    def similar(self, query: SimilarQuery) -> list[Shown]:
        """Up to k items nearest to the query item, never the item itself."""
        vector = self.index.vector(query.item_id)
        if vector is None:
            raise ItemNotFound(
                f"item {query.item_id!r} has no vector of model version {self.model_version!r}"
            )
        filters = Filters(excluded=query.exclude_item_ids | {query.item_id})
        picked = self._nearest(
            vector, query.k, self._allows(filters), len(filters.excluded), reason=REASON_SIMILAR
        )
        return [self._shown(candidate) for candidate in picked]

    def _allows(self, filters: Filters) -> Callable[[str], bool]:
        get = self.catalog.get
        return lambda item_id: filters.allows(item_id, get(item_id))

    def _nearest(
        self,
        vector: np.ndarray,
        k: int,
        allows: Callable[[str], bool],
        n_excluded: int,
        *,
        reason: str = REASON_PERSONAL,
    ) -> list[Candidate]:
        """The k best allowed neighbours, widening the search while filters take too many."""
        limit = min(len(self.index), self._max_candidates)
        if limit == 0:
            return []
        window: int | None = first_window(k, n_excluded, self._margin, limit)
        picked: list[Candidate] = []
        while window is not None:
            scores, item_ids = self.index.search(vector, window)
            picked = merge([candidates(item_ids[0], scores[0], reason)], k, allows)
            if len(picked) >= k:
                break
            window = next_window(window, limit)
        return picked

    async def _backfill(
        self, personal: list[Candidate], k: int, allows: Callable[[str], bool], n_excluded: int
    ) -> list[Candidate]:
        """`personal` followed by popular items up to k, widening the popular window as needed."""
        window: int | None = first_window(k, n_excluded + len(personal), self._margin,
                                          self._max_candidates)
        picked = personal
        while window is not None:
            pairs = await self._store.popular(window)
            popular = [Candidate(item_id, score, REASON_POPULAR) for item_id, score in pairs]
            picked = merge([personal, popular], k, allows)
            if len(picked) >= k or len(pairs) < window:
                break
            window = next_window(window, self._max_candidates)
        return picked

    def _shown(self, candidate: Candidate) -> Shown:
        entry = self.catalog.get(candidate.item_id)
        return Shown(
            item_id=candidate.item_id,
            score=candidate.score,
            reason=candidate.reason,
            title=entry.title if entry is not None else "",
            categories=entry.categories if entry is not None else (),
        )
