"""The routing fold and the changes that make the next record (contracts/routing.py)."""

from __future__ import annotations

import pytest

from contracts.routing import KEY, fold, problem, promoted, rolled_back, split, uri_of
from protos.events_pb2 import Routing


def _write(routing: Routing) -> tuple[bytes, bytes]:
    return KEY, routing.SerializeToString()


def test_the_last_valid_record_in_offset_order_is_in_force() -> None:
    first = Routing(production="v1", production_uri="/a/v1", revision=1)
    second = promoted(first, "v2", "/a/v2", by="training", at_ms=5)
    records = [_write(first), _write(second)]
    assert fold(None, records) == second
    assert fold(None, records[:1]) == first
    assert fold(None, []) is None
    # a reader that saw the first record earlier ends where one reading both does
    assert fold(fold(None, records[:1]), records[1:]) == fold(None, records)


def test_junk_other_keys_and_invalid_records_are_skipped_and_a_tombstone_resets() -> None:
    good = Routing(production="v1", revision=1)
    records = [
        _write(good),
        (KEY, b"\xff\xff not protobuf"),
        (b"release", Routing(production="other").SerializeToString()),
        _write(Routing(production="", revision=2)),  # no production
        _write(Routing(production="v1", candidate="v1", percent=5, revision=3)),
        _write(Routing(production="v1", percent=5, revision=4)),  # a share for no candidate
        _write(Routing(production="v1", candidate="v2", percent=150, revision=5)),
    ]
    assert fold(None, records) == good
    assert fold(good, [(KEY, None)]) is None
    assert fold(None, [(KEY, None), _write(good)]) == good


def test_promote_makes_production_previous_and_ends_the_split_of_the_promoted_candidate() -> None:
    start = Routing(production="a", production_uri="/s/a", revision=4)
    with_b = split(start, "b", 10, "/s/b", by="op", at_ms=1)
    assert (with_b.candidate, with_b.candidate_uri, with_b.percent, with_b.revision) == ("b", "/s/b", 10, 5)
    after = promoted(with_b, "b", "", by="op", at_ms=2)  # the uri the record already names
    assert (after.production, after.production_uri, after.previous, after.previous_uri) == ("b", "/s/b", "a", "/s/a")
    assert (after.candidate, after.percent, after.revision, after.change) == ("", 0, 6, "promote")
    assert problem(after) is None
    other = promoted(with_b, "c", "/s/c", by="training", at_ms=3)  # the experiment stays
    assert (other.production, other.previous, other.candidate, other.percent) == ("c", "a", "b", 10)
    assert other.changed_by == "training" and other.changed_at_ms == 3
    same = promoted(after, "b", "", by="op", at_ms=4)
    assert (same.production, same.previous) == ("b", "a")


def test_rollback_swaps_production_and_previous_and_split_zero_ends_the_experiment() -> None:
    routing = Routing(production="b", production_uri="/s/b", previous="a", previous_uri="/s/a",
                      candidate="c", candidate_uri="/s/c", percent=20, revision=7)
    back = rolled_back(routing, by="op", at_ms=1)
    assert (back.production, back.previous, back.candidate, back.percent) == ("a", "b", "c", 20)
    assert (back.change, back.revision, uri_of(back, "a"), uri_of(back, "b")) == ("rollback", 8, "/s/a", "/s/b")
    ended = split(routing, "", 0, "", by="op", at_ms=1)
    assert (ended.production, ended.previous, ended.candidate, ended.percent) == ("b", "a", "", 0)
    with pytest.raises(ValueError, match="no previous"):
        rolled_back(Routing(production="a"), by="op", at_ms=1)
    with pytest.raises(ValueError, match="production already"):
        split(routing, "b", 10, "", by="op", at_ms=1)
    with pytest.raises(ValueError, match="between 0 and 100"):
        split(routing, "c", 101, "", by="op", at_ms=1)
