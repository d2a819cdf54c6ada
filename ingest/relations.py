"""An edge list (CSV or Parquet) -> checked ``Relation`` messages for Kafka ``relations``.

Columns (case-insensitive, aliases below, or named with ``--column FIELD=NAME``):
``follower_id``, ``followee_id``, ``kind`` (follow, friend) and the optional
``timestamp`` (as in interaction files; without the column: the time of the import),
``removed`` and ``share_name`` (true/false, yes/no, 1/0; empty: false). Every row is
checked against contracts.relations before anything is sent: a file with bad rows is
refused whole, the error naming each bad row (1-based data row), its column and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from contracts.relations import KINDS, RelationLimits, relation_violations
from ingest.errors import InvalidRowsError
from ingest.tabular import (
    INTERACTION_ALIASES,
    parse_timestamps,
    read_table,
    resolve_columns,
    texts,
)
from protos import events_pb2

RELATION_ALIASES: dict[str, tuple[str, ...]] = {
    "follower_id": ("follower_id", "follower", "source", "src", "from_user"),
    "followee_id": ("followee_id", "followee", "target", "dst", "to_user"),
    "kind": ("kind", "relation", "relation_kind"),
    "timestamp": INTERACTION_ALIASES["timestamp"],
    "removed": ("removed", "deleted", "is_removed"),
    "share_name": ("share_name", "show_name", "public"),
}
RELATION_REQUIRED = ("follower_id", "followee_id", "kind")
MAX_REPORTED_ROWS = 20  # bad rows named in one error; the count covers them all
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0", ""})
# A Relation field -> the file's field it comes from.
_FIELD_OF = {"follower_id": "follower_id", "followee_id": "followee_id", "kind": "kind",
             "timestamp_ms": "timestamp"}


@dataclass(frozen=True)
class RowProblem:
    """One bad cell (or row, `column` empty): 1-based data row, the file's column, why."""

    row: int
    column: str
    reason: str
    description: str

    def line(self) -> str:
        where = f"column {self.column!r}" if self.column else "the row"
        return f"data row {self.row}, {where}: {self.description} ({self.reason})"


def read_relations(path: Path, columns: Mapping[str, str], *, now_ms: int,
                   limits: RelationLimits = RelationLimits()) -> list[events_pb2.Relation]:
    """Every row of `path` as a checked ``Relation``, in file order; InvalidRowsError
    naming the bad rows when any breaks a rule."""
    frame = read_table(path)
    found = resolve_columns(frame, RELATION_ALIASES, RELATION_REQUIRED, columns, path)
    column = {field: found.get(field, field) for field in RELATION_ALIASES}
    count = len(frame)

    def cells(field: str) -> list[str]:
        return texts(frame[found[field]]) if field in found else [""] * count

    stamps = (parse_timestamps(frame[found["timestamp"]], column=found["timestamp"], path=path)
              .tolist() if "timestamp" in found else [now_ms] * count)
    relations: list[events_pb2.Relation] = []
    problems: list[RowProblem] = []
    for index, (follower, followee, kind, stamp, removed, share) in enumerate(zip(
            cells("follower_id"), cells("followee_id"), cells("kind"), stamps,
            cells("removed"), cells("share_name"), strict=True)):
        row = index + 1
        here: list[RowProblem] = []
        kind_value = KINDS.get(kind.lower(), events_pb2.RelationKind.RELATION_KIND_UNSPECIFIED)
        if not kind_value:
            here.append(RowProblem(row, column["kind"], "unknown_relation_kind",
                                   f"unknown kind {kind!r}; known: {', '.join(KINDS)}"))
        flags = {name: _flag(text, row, column[name], here)
                 for name, text in (("removed", removed), ("share_name", share))}
        relation = events_pb2.Relation(follower_id=follower, followee_id=followee,
                                       kind=kind_value, timestamp_ms=int(stamp), **flags)
        here += [
            RowProblem(row, column[_FIELD_OF[v.field]] if v.field else "", v.reason, v.description)
            for v in relation_violations(relation, now_ms=now_ms, limits=limits)
            if v.field != "kind"  # an unknown kind is reported above, in the file's words
        ]
        problems += here
        relations.append(relation)
    if problems:
        raise InvalidRowsError(_report(path, problems, count))
    return relations


def _flag(text: str, row: int, column: str, problems: list[RowProblem]) -> bool:
    key = text.lower()
    if key in _TRUE:
        return True
    if key not in _FALSE:
        problems.append(RowProblem(row, column, "bad_value",
                                   f"{text!r} is not true/false, yes/no or 1/0"))
    return False


def _report(path: Path, problems: list[RowProblem], count: int) -> str:
    rows = len({problem.row for problem in problems})
    shown = problems[:MAX_REPORTED_ROWS]
    more = len(problems) - len(shown)
    lines = [f"{path}: {rows} of {count} rows are invalid, nothing was sent:",
             *(f"  {problem.line()}" for problem in shown)]
    if more:
        lines.append(f"  ... and {more} more problems")
    return "\n".join(lines)
