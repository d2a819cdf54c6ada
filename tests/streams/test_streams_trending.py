"""streams.trending: forward-decay increments and window settings, without Redis."""

from __future__ import annotations

import json
import math

import pytest

from contracts.online import decayed
from streams.trending import Window, increments, script_args, windows_from_settings


def test_increments_are_relative_to_the_newest_event() -> None:
    ref, sums = increments([("a", 1_000, 2.0), ("b", 3_000, 1.0), ("a", 3_000, 1.0),
                            ("c", 2_000, 0.0)], tau_ms=1_000.0)
    assert ref == 3_000
    assert sums == {"a": pytest.approx(1.0 + 2.0 * math.exp(-2.0)), "b": 1.0}  # c adds nothing


def test_no_positive_weight_means_no_increments() -> None:
    assert increments([("a", 1, 0.0)], tau_ms=1.0) == (0, {})


def test_script_args_keep_full_precision() -> None:
    args = script_args(3_600_000.0, 1_790_000_000_123, {"x": 1 / 3}, cap=7)
    assert args[1] == "1790000000123" and args[4] == "7"
    assert args[5] == f'["x",{1 / 3!r}]'
    assert json.loads(args[5]) == ["x", 1 / 3]


def test_decayed_count() -> None:
    assert decayed(2.0, base_ms=0, now_ms=1_000, tau_ms=1_000) == pytest.approx(2 / math.e)


def test_windows_from_settings() -> None:
    assert windows_from_settings({"1h": 3600}) == [Window("1h", 3_600_000.0)]
    with pytest.raises(ValueError, match="must match"):
        windows_from_settings({"1 h:x": 3600})
    with pytest.raises(ValueError, match="longer than 0"):
        windows_from_settings({"1h": 0})
