"""The normalised data set every source produces, and the pure operations on it.

A `Dataset` holds two pandas frames:

- ``items``: one row per item, columns ``ITEM_COLUMNS``; ``categories`` holds lists of str.
- ``interactions``: columns ``INTERACTION_COLUMNS``; ``row`` is the 0-based data row in the
  source file, ``timestamp_ms`` Unix epoch milliseconds. Rows are in time order, ties in
  source order (a stable sort on ``(timestamp_ms, row)``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ingest.errors import ReplayOptionError

ITEM_COLUMNS = ("item_id", "title", "description", "categories", "price", "availability")
INTERACTION_COLUMNS = ("row", "user_id", "item_id", "timestamp_ms", "event_type", "value")
AVAILABILITIES = ("", "in_stock", "out_of_stock", "discontinued")


@dataclass(frozen=True)
class Dataset:
    """A catalog and the interactions on it, normalised."""

    name: str
    items: pd.DataFrame
    interactions: pd.DataFrame


@dataclass(frozen=True)
class Selection:
    """Which interactions to replay; every field narrows the one before it.

    ``start_ms``/``end_ms`` bound event time as ``[start, end)``; ``users`` is either a
    count (the first N users to appear, in time order) or a fraction in (0, 1) of users
    drawn by a hash of the user id; ``limit`` keeps the first N remaining events.
    """

    start_ms: int | None = None
    end_ms: int | None = None
    users: int | float | None = None
    limit: int | None = None


def empty_items() -> pd.DataFrame:
    """An items frame with no rows and the normalised columns."""
    return pd.DataFrame({column: pd.Series(dtype=_ITEM_DTYPES[column]) for column in ITEM_COLUMNS})


def empty_interactions() -> pd.DataFrame:
    """An interactions frame with no rows and the normalised columns."""
    return pd.DataFrame(
        {column: pd.Series(dtype=_INTERACTION_DTYPES[column]) for column in INTERACTION_COLUMNS}
    )


_ITEM_DTYPES = {
    "item_id": "object",
    "title": "object",
    "description": "object",
    "categories": "object",
    "price": "float64",
    "availability": "object",
}
_INTERACTION_DTYPES = {
    "row": "int64",
    "user_id": "object",
    "item_id": "object",
    "timestamp_ms": "int64",
    "event_type": "object",
    "value": "float64",
}


def make_dataset(name: str, items: pd.DataFrame, interactions: pd.DataFrame) -> Dataset:
    """Order the interactions and give every interacted item a catalog entry."""
    ordered = order_interactions(interactions)
    return Dataset(name=name, items=complete_catalog(items, ordered), interactions=ordered)


def order_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    """Sort by ``(timestamp_ms, row)``, stable, so ties keep their source order."""
    ordered = interactions.sort_values(["timestamp_ms", "row"], kind="stable")
    return ordered.reset_index(drop=True)


def complete_catalog(items: pd.DataFrame, interactions: pd.DataFrame) -> pd.DataFrame:
    """Keep the last entry per item id and add a bare entry (title = id) for each
    interacted item the catalog lacks, in order of first interaction."""
    catalog = items.drop_duplicates("item_id", keep="last").reset_index(drop=True)
    known = set(catalog["item_id"])
    missing = [item for item in pd.unique(interactions["item_id"]) if item not in known]
    if not missing:
        return catalog
    bare = pd.DataFrame(
        {
            "item_id": missing,
            "title": missing,
            "description": [""] * len(missing),
            "categories": [[] for _ in missing],
            "price": np.zeros(len(missing)),
            "availability": [""] * len(missing),
        }
    )
    if catalog.empty:
        return bare
    return pd.concat([catalog, bare], ignore_index=True)


def items_without_metadata(dataset: Dataset) -> int:
    """Catalog entries that are bare placeholders (title equals id, nothing else)."""
    items = dataset.items
    bare = (
        (items["title"] == items["item_id"])
        & (items["description"] == "")
        & (items["categories"].map(len) == 0)
    )
    return int(bare.sum())


def parse_users(text: str) -> int | float:
    """Read ``--users``: an integer >= 1 is a count, a number in (0, 1) a fraction."""
    try:
        number = float(text)
    except ValueError:
        raise ReplayOptionError(f"--users must be a count or a fraction, got {text!r}") from None
    if number.is_integer() and number >= 1 and "." not in text:
        return int(number)
    if 0 < number < 1:
        return number
    raise ReplayOptionError(
        f"--users must be an integer >= 1 or a fraction in (0, 1), got {text!r}"
    )


def select(interactions: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """Apply a `Selection` to time-ordered interactions; the order is kept."""
    frame = interactions
    if selection.start_ms is not None and selection.end_ms is not None:
        if selection.end_ms <= selection.start_ms:
            raise ReplayOptionError("--end must be later than --start")
    if selection.start_ms is not None:
        frame = frame[frame["timestamp_ms"] >= selection.start_ms]
    if selection.end_ms is not None:
        frame = frame[frame["timestamp_ms"] < selection.end_ms]
    if selection.users is not None:
        frame = frame[frame["user_id"].isin(_chosen_users(frame["user_id"], selection.users))]
    if selection.limit is not None:
        if selection.limit < 1:
            raise ReplayOptionError(f"--limit must be >= 1, got {selection.limit}")
        frame = frame.head(selection.limit)
    return frame.reset_index(drop=True)


def _chosen_users(user_ids: pd.Series, users: int | float) -> set[str]:
    """The first `users` ids to appear, or a hash-drawn fraction of them."""
    unique = pd.unique(user_ids)
    if isinstance(users, int):
        if users < 1:
            raise ReplayOptionError(f"--users count must be >= 1, got {users}")
        return set(unique[:users])
    if not 0 < users < 1:
        raise ReplayOptionError(f"--users fraction must be in (0, 1), got {users}")
    return {user for user in unique if user_fraction_point(str(user)) < users}


def user_fraction_point(user_id: str) -> float:
    """A stable point in [0, 1) for a user id, used to draw a fraction of users."""
    digest = hashlib.sha1(user_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def event_id(dataset: str, row: int, user_id: str, item_id: str, timestamp_ms: int) -> str:
    """Deterministic id of one source row: replaying it again yields the same id."""
    key = f"{dataset}\x1f{row}\x1f{user_id}\x1f{item_id}\x1f{timestamp_ms}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def rebase_shift_ms(timestamps_ms: np.ndarray, now_ms: int) -> int:
    """The shift that moves the latest timestamp to `now_ms` (0 for no events)."""
    if len(timestamps_ms) == 0:
        return 0
    return int(now_ms - int(np.max(timestamps_ms)))


def describe(dataset: Dataset) -> list[str]:
    """Counts and ranges of a data set, as lines for a terminal."""
    inter = dataset.interactions
    lines = [
        f"dataset:       {dataset.name}",
        f"items:         {len(dataset.items)} ({items_without_metadata(dataset)} without metadata)",
        f"interactions:  {len(inter)}",
    ]
    if inter.empty:
        return lines
    per_user = inter.groupby("user_id", sort=False).size()
    first = pd.Timestamp(int(inter["timestamp_ms"].iloc[0]), unit="ms", tz="UTC")
    last = pd.Timestamp(int(inter["timestamp_ms"].iloc[-1]), unit="ms", tz="UTC")
    types = inter["event_type"].value_counts()
    lines += [
        f"users:         {len(per_user)}",
        f"interacted:    {inter['item_id'].nunique()} items",
        f"per user:      min {per_user.min()}, median {per_user.median():g}, max {per_user.max()}",
        f"event types:   " + ", ".join(f"{name} {count}" for name, count in types.items()),
        f"time range:    {first.isoformat()} .. {last.isoformat()}",
    ]
    return lines
