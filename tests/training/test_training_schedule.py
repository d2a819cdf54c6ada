"""The scheduler: when a run is due, one run at a time, failures retried."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.schedule import (
    Policy,
    RunInProgressError,
    State,
    exclusive,
    is_due,
    loop,
    tick,
)

POLICY = Policy(interval_s=100.0, min_new_events=50, retry_s=10.0)


def test_due_first_then_by_interval_or_new_events() -> None:
    assert is_due(POLICY, State(), now=0.0, new_events=0)
    done = State(last_success=0.0)
    assert not is_due(POLICY, done, now=99.0, new_events=49)
    assert is_due(POLICY, done, now=100.0, new_events=0)
    assert is_due(POLICY, done, now=1.0, new_events=50)
    only_events = Policy(interval_s=None, min_new_events=50, retry_s=10.0)
    assert not is_due(only_events, done, now=1e9, new_events=49)


def test_a_failure_is_retried_after_the_delay() -> None:
    failed = State(last_success=0.0, last_failure=200.0)
    assert not is_due(POLICY, failed, now=205.0, new_events=10_000)
    assert is_due(POLICY, failed, now=210.0, new_events=0)


def test_tick_records_failure_and_success(tmp_path: Path) -> None:
    state = State()

    def broken() -> None:
        raise RuntimeError("broker gone")

    assert not tick(POLICY, state, store=tmp_path, now=0.0, new_events=0, run=broken)
    assert state.last_failure == 0.0 and state.last_success is None
    assert not tick(POLICY, state, store=tmp_path, now=5.0, new_events=0, run=lambda: None)
    assert tick(POLICY, state, store=tmp_path, now=10.0, new_events=0, run=lambda: None)
    assert state.last_success == 10.0


def test_never_two_runs_at_once(tmp_path: Path) -> None:
    ran = []
    with exclusive(tmp_path):
        with pytest.raises(RunInProgressError):
            with exclusive(tmp_path):
                pass
        state = State()
        assert not tick(POLICY, state, store=tmp_path, now=0.0, new_events=0,
                        run=lambda: ran.append(1))
        assert ran == [] and state.last_failure is None  # skipped, not failed
    with exclusive(tmp_path):  # released
        pass


def test_loop_runs_when_due(tmp_path: Path) -> None:
    clock = iter([0.0, 50.0, 120.0, 130.0])
    counts = iter([0, 0, 0, 60])
    runs: list[int] = []
    state = loop(POLICY, store=tmp_path, poll_s=1.0, count_new_events=lambda: next(counts),
                 run=lambda: runs.append(1), clock=lambda: next(clock), sleep=lambda s: None,
                 ticks=4)
    assert len(runs) == 3  # first tick, after the interval (120), after 60 new events
    assert state.last_success == 130.0
