"""Generic import of interactions and items from CSV or Parquet files.

The format follows the extension: ``.csv``, ``.csv.gz``, ``.tsv`` or ``.parquet``/``.pq``.
Columns are found by the aliases below (case-insensitive) unless named explicitly.

Timestamps: a column of numbers is epoch seconds when every value is below 1e11 (dates
up to the year 5138) and epoch milliseconds otherwise (dates from 1973 on), decided once
per file; a column of text is read as numbers when its first value is a number, else as
ISO-8601 (a time without an offset is UTC); a Parquet timestamp column is used as is.
Row numbers in error messages are 1-based data rows, the header not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.online import EVENT_TYPES
from ingest.dataset import (
    AVAILABILITIES,
    Dataset,
    empty_interactions,
    empty_items,
    make_dataset,
)
from ingest.errors import (
    EmptyFileError,
    InvalidValueError,
    MissingColumnError,
    SourceFileNotFoundError,
    TimestampParseError,
    UnknownEventTypeError,
    UnsupportedFormatError,
)

INTERACTION_ALIASES: dict[str, tuple[str, ...]] = {
    "user_id": ("user_id", "user", "userid", "customer_id", "visitor_id", "visitorid"),
    "item_id": ("item_id", "item", "itemid", "product_id", "productid"),
    "timestamp": ("timestamp", "timestamp_ms", "ts", "time", "event_time", "datetime"),
    "event_type": ("event_type", "type", "event", "action"),
    "value": ("value", "rating", "amount", "quantity"),
}
INTERACTION_REQUIRED = ("user_id", "item_id", "timestamp")
ITEM_ALIASES: dict[str, tuple[str, ...]] = {
    "item_id": ("item_id", "id", "item", "itemid", "product_id", "productid"),
    "title": ("title", "name", "product_name"),
    "description": ("description", "desc", "summary"),
    "categories": ("categories", "category", "genres", "genre"),
    "price": ("price",),
    "availability": ("availability", "stock_status"),
}
ITEM_REQUIRED = ("item_id", "title")
EVENT_TYPE_ALIASES = {
    "addtocart": "add_to_cart",
    "cart": "add_to_cart",
    "transaction": "purchase",
    "buy": "purchase",
    "order": "purchase",
}
CATEGORY_SEPARATOR = "|"
_READERS = {".csv": "csv", ".csv.gz": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_SECONDS_BELOW = 1e11


def load_tabular(
    interactions: Path | None = None,
    items: Path | None = None,
    *,
    name: str | None = None,
    interaction_columns: Mapping[str, str] | None = None,
    item_columns: Mapping[str, str] | None = None,
    default_event_type: str = "view",
) -> Dataset:
    """Load an interactions file, an items file, or both, into a `Dataset`."""
    sources = [path for path in (interactions, items) if path is not None]
    if not sources:
        raise SourceFileNotFoundError("give an interactions file, an items file, or both")
    default_type = normalise_event_type(default_event_type, where="the default event type")
    inter_frame = (
        read_interactions(interactions, interaction_columns or {}, default_type)
        if interactions is not None
        else empty_interactions()
    )
    item_frame = read_items(items, item_columns or {}) if items is not None else empty_items()
    return make_dataset(name or _stem(sources[0]), item_frame, inter_frame)


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (all cells as text) or Parquet file; refuse empty ones."""
    kind = _reader_for(path)
    if not path.is_file():
        raise SourceFileNotFoundError(f"{path}: no such file")
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False
            )
    except pd.errors.EmptyDataError:
        raise EmptyFileError(f"{path}: the file is empty") from None
    if frame.empty:
        columns = ", ".join(map(str, frame.columns))
        raise EmptyFileError(f"{path}: no data rows (columns: {columns})")
    return frame


def read_interactions(
    path: Path, columns: Mapping[str, str], default_event_type: str
) -> pd.DataFrame:
    """Interactions file -> normalised interactions frame (file order)."""
    frame = read_table(path)
    found = resolve_columns(frame, INTERACTION_ALIASES, INTERACTION_REQUIRED, columns, path)
    users = _ids(frame[found["user_id"]], found["user_id"], path)
    items = _ids(frame[found["item_id"]], found["item_id"], path)
    timestamps = parse_timestamps(frame[found["timestamp"]], column=found["timestamp"], path=path)
    if "event_type" in found:
        types = [
            normalise_event_type(
                text, where=f"{path}: column {found['event_type']!r}, data row {index + 1}",
                default=default_event_type,
            )
            for index, text in enumerate(texts(frame[found["event_type"]]))
        ]
    else:
        types = [default_event_type] * len(frame)
    values = (
        _numbers(frame[found["value"]], found["value"], path)
        if "value" in found
        else np.zeros(len(frame))
    )
    return pd.DataFrame(
        {
            "row": np.arange(len(frame), dtype=np.int64),
            "user_id": users,
            "item_id": items,
            "timestamp_ms": timestamps,
            "event_type": types,
            "value": values,
        }
    )


def read_items(path: Path, columns: Mapping[str, str]) -> pd.DataFrame:
    """Items file -> normalised items frame (file order, duplicates kept for now)."""
    frame = read_table(path)
    found = resolve_columns(frame, ITEM_ALIASES, ITEM_REQUIRED, columns, path)
    count = len(frame)

    def optional_texts(field: str) -> list[str]:
        return texts(frame[found[field]]) if field in found else [""] * count

    return pd.DataFrame(
        {
            "item_id": _ids(frame[found["item_id"]], found["item_id"], path),
            "title": texts(frame[found["title"]]),
            "description": optional_texts("description"),
            "categories": (
                [_categories(cell) for cell in frame[found["categories"]]]
                if "categories" in found
                else [[] for _ in range(count)]
            ),
            "price": _numbers(frame[found["price"]], found["price"], path)
            if "price" in found
            else np.zeros(count),
            "availability": [
                _availability(text, found.get("availability", ""), index, path)
                for index, text in enumerate(optional_texts("availability"))
            ],
        }
    )


def resolve_columns(
    frame: pd.DataFrame,
    aliases: Mapping[str, tuple[str, ...]],
    required: tuple[str, ...],
    explicit: Mapping[str, str],
    path: Path,
) -> dict[str, str]:
    """Map each field to a column of `frame`: an explicit name, else the first alias found."""
    unknown = sorted(set(explicit) - set(aliases))
    if unknown:
        raise MissingColumnError(
            f"unknown field(s) {', '.join(unknown)}; fields are {', '.join(aliases)}"
        )
    present = {str(column).lower(): str(column) for column in frame.columns}
    listed = ", ".join(map(str, frame.columns))
    found: dict[str, str] = {}
    for field, names in aliases.items():
        if field in explicit:
            if explicit[field] not in frame.columns:
                raise MissingColumnError(
                    f"{path}: column {explicit[field]!r} (for {field}) not found; "
                    f"columns found: {listed}"
                )
            found[field] = explicit[field]
            continue
        match = next((present[name] for name in names if name in present), None)
        if match is not None:
            found[field] = match
        elif field in required:
            raise MissingColumnError(
                f"{path}: required column {field!r} not found (accepted names: "
                f"{', '.join(names)}); columns found: {listed}"
            )
    return found


def parse_timestamps(values: pd.Series, *, column: str, path: Path) -> np.ndarray:
    """A timestamp column -> int64 epoch milliseconds (rules in the module docstring)."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _datetimes_to_ms(values, column, path)
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values):
        return _epoch_to_ms(values.astype("float64"), values, column, path)
    cells = values.astype(object).map(lambda cell: "" if cell is None else str(cell).strip())
    first = cells.iloc[0]
    if pd.notna(pd.to_numeric(first, errors="coerce")) and first != "":
        return _epoch_to_ms(pd.to_numeric(cells, errors="coerce"), values, column, path)
    parsed = pd.to_datetime(cells, format="ISO8601", utc=True, errors="coerce")
    return _datetimes_to_ms(parsed, column, path, original=values)


def normalise_event_type(text: str, *, where: str, default: str | None = None) -> str:
    """``"Add-To-Cart"`` -> ``"add_to_cart"``; empty -> `default`; unknown -> error."""
    key = text.strip().lower().replace("-", "_").replace(" ", "_")
    if not key and default is not None:
        return default
    key = EVENT_TYPE_ALIASES.get(key, key)
    if key not in EVENT_TYPES:
        raise UnknownEventTypeError(
            f"{where}: unknown event type {text!r}; known: {', '.join(EVENT_TYPES)}"
        )
    return key


def _epoch_to_ms(
    numbers: pd.Series, original: pd.Series, column: str, path: Path
) -> np.ndarray:
    _raise_at_first_missing(numbers, original, column, path, "a number")
    seconds = bool((numbers.abs() < _SECONDS_BELOW).all())
    scaled = numbers.to_numpy(dtype="float64") * (1000.0 if seconds else 1.0)
    return np.round(scaled).astype(np.int64)


def _datetimes_to_ms(
    parsed: pd.Series, column: str, path: Path, original: pd.Series | None = None
) -> np.ndarray:
    shown = parsed if original is None else original
    _raise_at_first_missing(parsed, shown, column, path, "an ISO-8601 time")
    if parsed.dt.tz is None:
        parsed = parsed.dt.tz_localize("UTC")
    return parsed.dt.as_unit("ms").astype("int64").to_numpy()


def _raise_at_first_missing(
    parsed: pd.Series, original: pd.Series, column: str, path: Path, expected: str
) -> None:
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        index = int(bad[0])
        raise TimestampParseError(
            f"{path}: column {column!r}, data row {index + 1}: cannot read "
            f"{original.iloc[index]!r} as a timestamp (expected {expected}: epoch seconds, "
            f"epoch milliseconds or ISO-8601)"
        )


def _reader_for(path: Path) -> str:
    name = path.name.lower()
    for suffix, kind in _READERS.items():
        if name.endswith(suffix):
            return kind
    raise UnsupportedFormatError(
        f"{path}: unsupported file type; use one of {', '.join(_READERS)}"
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _READERS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def texts(values: pd.Series) -> list[str]:
    """Every cell as stripped text; missing cells (None, NA, NaN) as empty."""
    return [
        "" if cell is None or cell is pd.NA or _is_nan(cell) else str(cell).strip()
        for cell in values
    ]


def _ids(values: pd.Series, column: str, path: Path) -> list[str]:
    ids = texts(values)
    empty = next((index for index, text in enumerate(ids) if not text), None)
    if empty is not None:
        raise InvalidValueError(f"{path}: column {column!r}, data row {empty + 1}: empty id")
    return ids


def _numbers(values: pd.Series, column: str, path: Path) -> np.ndarray:
    cells = texts(values)
    numbers = np.zeros(len(cells))
    for index, text in enumerate(cells):
        if not text:
            continue
        try:
            numbers[index] = float(text)
        except ValueError:
            raise InvalidValueError(
                f"{path}: column {column!r}, data row {index + 1}: {text!r} is not a number"
            ) from None
    return numbers


def _categories(cell: object) -> list[str]:
    if isinstance(cell, (list, tuple, np.ndarray)):
        parts = [str(part) for part in cell]
    elif cell is None or _is_nan(cell):
        parts = []
    else:
        parts = str(cell).split(CATEGORY_SEPARATOR)
    return [part.strip() for part in parts if part.strip()]


def _availability(text: str, column: str, index: int, path: Path) -> str:
    key = text.lower().replace("-", "_").replace(" ", "_")
    if key not in AVAILABILITIES:
        raise InvalidValueError(
            f"{path}: column {column!r}, data row {index + 1}: unknown availability {text!r}; "
            f"known: {', '.join(value for value in AVAILABILITIES if value)} or empty"
        )
    return key


def _is_nan(cell: object) -> bool:
    return isinstance(cell, float) and cell != cell
