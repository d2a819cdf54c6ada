"""The committed generated code matches what the .proto files generate today."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos import events_pb2, recommender_pb2
from protos.generate import ROOT, generate


def test_committed_generated_code_is_fresh(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert written, "protoc produced no files"
    stale = [
        p.name
        for p in written
        if not (ROOT / "protos" / p.name).exists()
        or (ROOT / "protos" / p.name).read_bytes() != p.read_bytes()
    ]
    assert not stale, f"generated code is stale, run `python -m protos.generate`: {stale}"


def test_event_round_trip() -> None:
    event = events_pb2.Event(
        event_id="e1", user_id="u1", item_id="i1", type=events_pb2.PURCHASE, timestamp_ms=1_700_000_000_000
    )
    event.context["device"] = "mobile"
    decoded = events_pb2.Event.FromString(event.SerializeToString())
    assert decoded == event
    assert not decoded.HasField("session_id")


def test_recommender_service_declares_the_public_rpcs() -> None:
    service = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]
    assert {m.name for m in service.methods} >= {"Recommend", "SimilarItems", "TrackEvents"}


@pytest.mark.parametrize("name", ["VIEW", "CLICK", "ADD_TO_CART", "PURCHASE", "RATING"])
def test_event_types_are_stable(name: str) -> None:
    # Wire values are a contract with every producer; renumbering breaks stored logs.
    expected = {"VIEW": 1, "CLICK": 2, "ADD_TO_CART": 3, "PURCHASE": 4, "RATING": 5}[name]
    assert events_pb2.EventType.Value(name) == expected
