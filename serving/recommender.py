"""Answers ``Recommend``, ``RecommendBatch`` and ``SimilarItems`` from the routed model
version's index, the catalog and Redis.

Each request reads one :class:`~serving.models.Model` (version and index together), so
a user vector is only ever searched in an index of its own version. The query vector:

- ``personal``: the user's vector from Redis, when it is of the routed version;
- ``recent_items``: else the mean of the user's newest seen items' vectors in the routed
  version's index (the user's vector is of a version serving does not answer with);
- ``popular``: else none; trending (then all-time popular) items answer.

With the social source on (:mod:`serving.social`; a server-wide weight above 0, the
request not ``exclude_social``), what the people the user follows did is read alongside
the user's state and fused with the model's ranking (``+social`` in the strategy when one
of those items is answered); every returned item they acted on carries social proof.

Seen and excluded items never take a place in the FAISS results; catalog filters
(availability, categories, price) and the per-category cap run on the window, which
widens ×4 while fewer than k pass; trending items backfill. Every answer is logged to
``recommendations`` with its id and version.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from contracts.social import SocialItem
from protos import events_pb2
from serving.catalog import Catalog
from serving.coalesce import Coalescer
from serving.errors import ItemNotFound
from serving.explain import anchors, mean_vector, similar_to
from serving.filters import Filters
from serving.index import Hits, ItemIndex
from serving.models import Model, Models
from serving.online import OnlineStore, UserState
from serving.ranking import (
    REASON_PERSONAL,
    REASON_POPULAR,
    REASON_SIMILAR,
    REASON_TRENDING,
    Candidate,
    candidates,
    first_window,
    merge,
    next_window,
)
from serving.requests import RecommendQuery, SimilarQuery
from serving.social import (
    NO_SOCIAL,
    REASON_SOCIAL,
    Social,
    SocialGraph,
    fused,
    social_candidates,
    social_proof,
    social_reason,
)
from serving.tracking import RecommendationLog

log = logging.getLogger(__name__)

STRATEGY_PERSONAL = "personal"
STRATEGY_RECENT = "recent_items"
STRATEGY_POPULAR = "popular"
STRATEGY_SIMILAR = "similar"
STRATEGY_SOCIAL = "social"  # joined to the others: "personal+social"


class Shown(NamedTuple):
    """One returned item with its display fields (a named tuple: k of them per request,
    at a third of a frozen dataclass's cost)."""

    item_id: str
    score: float
    reason: str
    title: str
    categories: tuple[str, ...]
    social_proof: str = ""
    social_count: int = 0
    social_user_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recommendation:
    """The answer to one call."""

    items: list[Shown]
    model_version: str
    recommendation_id: str
    strategy: str


@dataclass(frozen=True)
class Tuning:
    """Candidate windows and behaviour knobs (from settings)."""

    candidate_margin: int = 20
    max_candidates: int = 5000
    exclude_seen: bool = True
    recent_items: int = 20
    search_in_thread: bool = False
    coalesce_search: bool = True


@dataclass(frozen=True)
class Search:
    """One query row for :meth:`ItemIndex.search_hits`."""

    index: ItemIndex
    vector: np.ndarray  # [dim]
    k: int
    excluded: frozenset[str]


def search_all(searches: list[Search]) -> list[Hits]:
    """Every search's answer; the rows of one index go to FAISS in one call."""
    by_index: dict[int, list[int]] = {}
    for n, search in enumerate(searches):
        by_index.setdefault(id(search.index), []).append(n)
    found: list[Hits | None] = [None] * len(searches)
    for rows in by_index.values():
        index = searches[rows[0]].index
        answers = index.search_hits(
            np.stack([searches[n].vector for n in rows]),
            [searches[n].k for n in rows], [searches[n].excluded for n in rows],
        )
        for n, answer in zip(rows, answers, strict=True):
            found[n] = answer
    return [answer for answer in found if answer is not None]


class Recommender:
    """Candidate generation, filtering, diversity, explanations and backfill."""

    def __init__(self, *, models: Models, catalog: Catalog, store: OnlineStore, tuning: Tuning,
                 log: RecommendationLog | None = None, social: SocialGraph | None = None) -> None:
        self.models = models
        self.catalog = catalog
        self._store = store
        self._social = social if social is not None and social.on else None
        self._tuning = tuning
        self._log = log
        # Searches of concurrent requests made in one event-loop turn share a FAISS call.
        self._coalesced: Coalescer[Search, Hits] | None = (
            Coalescer(self._search_batch) if tuning.coalesce_search else None
        )

    async def recommend(self, query: RecommendQuery, method: str = "Recommend") -> Recommendation:
        """Up to k items for the user (fewer only when fewer pass the filters)."""
        if self._social is None or query.exclude_social:
            return await self._answer(query, await self._store.user(query.user_id), NO_SOCIAL, method)
        state, (social,) = await asyncio.gather(self._store.user(query.user_id),
                                                self._social.read([query.user_id]))
        return await self._answer(query, state, social, method)

    async def recommend_batch(self, queries: list[RecommendQuery]) -> list[Recommendation]:
        """One answer per query, in order; every user's state read in one round trip, and
        the social candidates of those who get them in one more (concurrently)."""
        users = [query.user_id for query in queries]
        wanted = [n for n, query in enumerate(queries) if not query.exclude_social]
        socials = [NO_SOCIAL] * len(queries)
        if self._social is None or not wanted:
            states = await self._store.users(users)
        else:
            states, read = await asyncio.gather(self._store.users(users),
                                                self._social.read([users[n] for n in wanted]))
            for n, social in zip(wanted, read, strict=True):
                socials[n] = social
        return [await self._answer(query, state, social, "RecommendBatch")
                for query, state, social in zip(queries, states, socials, strict=True)]

    async def similar(self, query: SimilarQuery) -> Recommendation:
        """Up to k items nearest to the query item, never the item itself."""
        model = self.models.for_user(query.user_id) if query.user_id else self.models.production
        vector = model.index.vector(query.item_id)
        if vector is None:
            raise ItemNotFound(
                f"item {query.item_id!r} has no vector of model version {model.version!r}"
            )
        filters = Filters(
            excluded=query.exclude_item_ids | {query.item_id},
            include_categories=query.include_categories,
            exclude_categories=query.exclude_categories,
            min_price=query.min_price, max_price=query.max_price,
        )
        nearest = self._nearest(model.index, vector, query.k, filters, 0, REASON_SIMILAR)
        if self._social is None or not query.user_id:
            picked, _ = await nearest
            return self._finish(model.version, picked, STRATEGY_SIMILAR, query.user_id, "SimilarItems")
        (picked, _), (social,) = await asyncio.gather(nearest, self._social.read([query.user_id]))
        return self._finish(model.version, picked, STRATEGY_SIMILAR, query.user_id, "SimilarItems",
                            social)

    async def _answer(self, query: RecommendQuery, state: UserState, social: Social,
                      method: str) -> Recommendation:
        model = self.models.for_user(query.user_id)
        exclude = self._tuning.exclude_seen and not query.include_seen
        filters = Filters(
            excluded=query.exclude_item_ids.union(state.excluded) if exclude else query.exclude_item_ids,
            include_categories=query.include_categories,
            exclude_categories=query.exclude_categories,
            min_price=query.min_price, max_price=query.max_price,
        )
        vector, strategy = self._query_vector(model, state)
        theirs = self._social_candidates(model, social, filters)
        personal: list[Candidate] = []
        if vector is not None:
            # Social items in the answer take places and diversity slots from personal ones:
            # one more personal candidate for each social one that may be shown.
            wanted = query.k + min(len(theirs), query.k)
            personal, hits = await self._nearest(model.index, vector, wanted, filters,
                                                 query.max_per_category, REASON_PERSONAL)
            personal = self._explained(model.index, personal, hits, state.seen)
        leading = picked = personal
        if theirs and self._social is not None:
            leading = fused(personal, theirs, self._social.weight)
            picked = merge([leading], query.k, self._allows(filters),
                           max_per_group=query.max_per_category, group=self._group)
        if len(picked) < query.k:
            picked = await self._backfill(leading, query.k, filters, query.max_per_category)
        if not personal:
            strategy = STRATEGY_POPULAR
        if social.items and any(candidate.item_id in social.by_id for candidate in picked):
            strategy = f"{strategy}+{STRATEGY_SOCIAL}"
        placed = len(set(theirs).intersection(picked)) if theirs else 0
        return self._finish(model.version, picked, strategy, query.user_id, method, social, placed)

    def _social_candidates(self, model: Model, social: Social, filters: Filters) -> list[Candidate]:
        """The social ranking among the items the answer may show: known (in the served
        index or the catalog), allowed by every exclusion and filter."""
        if not social.items:
            return []
        allows, index, get = self._allows(filters), model.index, self.catalog.get
        return [c for c in social_candidates(social.items)
                if (c.item_id in index or get(c.item_id) is not None) and allows(c.item_id)]

    def _query_vector(self, model: Model, state: UserState) -> tuple[np.ndarray | None, str]:
        """The user's vector if it is of `model`'s version, else the mean of their recent
        items in `model`'s space: never a vector of one version against another's index."""
        if state.vector is not None and state.version == model.version:
            if len(state.vector) == model.index.dim:
                return state.vector, STRATEGY_PERSONAL
            log.warning("user vector of version %s has %s dimensions, its index %s; not using it",
                        model.version, len(state.vector), model.index.dim)
        if state.seen:
            _, recent = model.index.vectors(state.seen[: self._tuning.recent_items])
            mean = mean_vector(recent)
            if mean is not None:
                return mean, STRATEGY_RECENT
        return None, STRATEGY_POPULAR

    def _allows(self, filters: Filters) -> Callable[[str], bool]:
        """:meth:`Filters.allows` against the catalog; without category or price filters
        (most requests) only exclusion and availability are checked, in one call."""
        get = self.catalog.get
        if filters.narrows:
            return lambda item_id: filters.allows(item_id, get(item_id))
        excluded = filters.excluded

        def allows(item_id: str) -> bool:
            if item_id in excluded:
                return False
            entry = get(item_id)
            return entry is None or entry.available

        return allows

    def _group(self, item_id: str) -> str | None:
        """The item's first category, case-folded: what the diversity cap counts."""
        entry = self.catalog.get(item_id)
        if entry is None or not entry.categories:
            return None
        return entry.categories[0].strip().casefold() or None

    async def _nearest(self, index: ItemIndex, vector: np.ndarray, k: int, filters: Filters,
                       max_per_category: int, reason: str) -> tuple[list[Candidate], Hits | None]:
        """The k best allowed neighbours, widening the search while filters take too many,
        and the search's answer they were picked from."""
        limit = min(len(index), self._tuning.max_candidates)
        if limit == 0:
            return [], None
        extra = k * 3 if filters.narrows or max_per_category else 0
        window: int | None = first_window(k, extra, self._tuning.candidate_margin, limit)
        allows = self._allows(filters)
        picked: list[Candidate] = []
        hits: Hits | None = None
        while window is not None:
            search = Search(index, vector, window, filters.excluded)
            if self._coalesced is not None:
                hits = await self._coalesced(search)
            else:
                hits = (await self._search_batch([search]))[0]
            picked = merge([candidates(hits.item_ids, hits.scores, reason)], k, allows,
                           max_per_group=max_per_category, group=self._group)
            if len(picked) >= k or len(hits.item_ids) < window:
                break
            window = next_window(window, limit)
        return picked, hits

    async def _search_batch(self, searches: list[Search]) -> list[Hits]:
        if self._tuning.search_in_thread:  # FAISS releases the GIL: the loop runs on meanwhile
            return await asyncio.to_thread(search_all, searches)
        return search_all(searches)

    def _explained(self, index: ItemIndex, picked: list[Candidate], hits: Hits | None,
                   seen: tuple[str, ...]) -> list[Candidate]:
        """Each personal item says which recent item of the user it is closest to.

        The picked items' vectors are read by the FAISS ids their search answered with,
        so only the recent items are looked up by item id.
        """
        if not picked or not seen or hits is None:
            return picked
        position = {item_id: n for n, item_id in enumerate(hits.item_ids)}
        shown_ids = [c.item_id for c in picked]
        keys = hits.keys[[position[item_id] for item_id in shown_ids]]
        vectors = index.found_vectors(keys, shown_ids, seen[: self._tuning.recent_items])
        if vectors is None or not vectors[1]:
            return picked  # an item removed meanwhile, or no recent item indexed: generic reason
        shown, recent_ids, recent = vectors
        same = None  # [k, r]: a seen item shown again (only when seen items are not excluded)
        if not set(recent_ids).isdisjoint(shown_ids):
            same = np.equal.outer(np.array(shown_ids, dtype=object),
                                  np.array(recent_ids, dtype=object))
        rows = anchors(shown, recent, same).tolist()
        return [c if row < 0 else Candidate(c.item_id, c.score, similar_to(self._name(recent_ids[row])))
                for c, row in zip(picked, rows, strict=True)]

    def _name(self, item_id: str) -> str:
        entry = self.catalog.get(item_id)
        return entry.title if entry is not None and entry.title else item_id

    async def _backfill(self, personal: list[Candidate], k: int, filters: Filters,
                        max_per_category: int) -> list[Candidate]:
        """`personal`, then trending items, then all-time popular ones, up to k, widening
        the window as needed."""
        limit = self._tuning.max_candidates
        window: int | None = first_window(k, len(filters.excluded) + len(personal),
                                          self._tuning.candidate_margin, limit)
        allows = self._allows(filters)
        picked = personal
        while window is not None:
            trending, popular = await self._store.popular(window)
            picked = merge(
                [personal, [Candidate(item_id, score, REASON_TRENDING) for item_id, score in trending],
                 [Candidate(item_id, score, REASON_POPULAR) for item_id, score in popular]],
                k, allows, max_per_group=max_per_category, group=self._group,
            )
            if len(picked) >= k or max(len(trending), len(popular)) < window:
                break
            window = next_window(window, limit)
        return picked

    def _finish(self, version: str, picked: list[Candidate], strategy: str, user_id: str,
                method: str, social: Social = NO_SOCIAL, placed: int = 0) -> Recommendation:
        """The answer, logged; `placed`: how many of `picked` the social source placed."""
        items = [self._shown(candidate, social.by_id.get(candidate.item_id)) for candidate in picked]
        if social.items and self._social is not None:
            self._social.shown(method, placed, sum(1 for item in items if item.social_proof))
        answer = Recommendation(
            items=items,
            model_version=version,
            recommendation_id=uuid.uuid4().hex,
            strategy=strategy,
        )
        if self._log is not None:
            self._log.record(events_pb2.RecommendationLog(
                recommendation_id=answer.recommendation_id, model_version=version,
                user_id=user_id, item_ids=[item.item_id for item in answer.items],
                strategy=strategy, served_at_ms=int(time.time() * 1000), method=method,
            ))
        return answer

    def _shown(self, candidate: Candidate, social: SocialItem | None = None) -> Shown:
        entry = self.catalog.get(candidate.item_id)
        reason = candidate.reason
        if reason == REASON_SOCIAL and social is not None:
            reason = social_reason(social)
        return Shown(
            item_id=candidate.item_id,
            score=candidate.score,
            reason=reason,
            title=entry.title if entry is not None else "",
            categories=entry.categories if entry is not None else (),
            social_proof=social_proof(social) if social is not None else "",
            social_count=social.count if social is not None else 0,
            social_user_ids=tuple(social.named) if social is not None else (),
        )
