"""The pure parts of a run: which items get vectors, and the summary."""

from __future__ import annotations

from pathlib import Path

from protos import events_pb2
from training.eventlog import EventLog
from training.job import RunSummary, catalog_rows


def _enriched(user: str, item: events_pb2.Item, ts: int) -> events_pb2.EnrichedEvent:
    return events_pb2.EnrichedEvent(
        event=events_pb2.Event(user_id=user, item_id=item.item_id, timestamp_ms=ts),
        item=item,
        weight=1.0,
    )


def test_catalog_rows_merge_catalog_and_log_items() -> None:
    log = EventLog(topic="t", ranges={0: (0, 2)})
    log.add(_enriched("u", events_pb2.Item(item_id="b", title="Old B"), 1))
    log.add(_enriched("u", events_pb2.Item(item_id="z", title="Zed", categories=["Z"]), 2))
    log.add(events_pb2.EnrichedEvent(event=events_pb2.Event(user_id="u", item_id="q")))
    catalog = {
        "b": events_pb2.Item(item_id="b", title="New B", description="fresh"),
        "a": events_pb2.Item(item_id="a", title="A"),
    }
    ids, texts = catalog_rows(catalog, log)
    assert ids == ["a", "b", "q", "z"]
    assert texts == ["A", "New B. fresh", "q", "Zed. Z"]
    assert len(log) == 3 and log.user_ids == ["u", "u", "u"]


def test_summary_lines() -> None:
    scores = {"hr@10": 0.5, "ndcg@10": 0.25, "mrr": 0.125}
    summary = RunSummary(
        version="v1", path=Path("/store/v1"), previous=None, n_events=10, n_items=3,
        metrics={"k": 10, "users": 4, "model": scores, "popular": scores}, seconds=1.0,
    )
    text = "\n".join(summary.lines())
    assert "version:   v1 (previous: none)" in text
    assert "model    HR@10 0.5000  NDCG@10 0.2500  MRR 0.1250" in text
