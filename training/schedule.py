"""``python -m training schedule``: run training every interval and/or after N new events.

Never two runs at once: a run holds an exclusive lock file in the artifact store (also
against a second scheduler or a manual ``run``). A failed run changes nothing in
production (a version is promoted only at the very end of a successful run) and is
retried after ``schedule_retry_s``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from training.errors import TrainingError

log = logging.getLogger(__name__)

LOCK = ".training.lock"


class RunInProgressError(TrainingError):
    """Another training run holds the store's lock."""


class Stopped(BaseException):  # noqa: N818 -- like KeyboardInterrupt: no handler for errors catches it
    """SIGINT or SIGTERM arrived: the run in progress is abandoned."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Stopped` wherever the job is (a read, a training step,
    an export): what it had written is in temporary files that are removed on the way
    out, and nothing is promoted or announced. Installed explicitly because a process
    started in the background by a script inherits SIGINT ignored. A second signal
    during the clean-up kills the process."""

    def stop(signum: int, _frame: object) -> None:
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        raise Stopped(signum)

    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@dataclass(frozen=True)
class Policy:
    """When a run is due. None disables a trigger."""

    interval_s: float | None
    min_new_events: int | None
    retry_s: float


@dataclass
class State:
    """What the scheduler remembers between ticks (monotonic seconds)."""

    last_success: float | None = None
    last_failure: float | None = None


def is_due(policy: Policy, state: State, now: float, new_events: int) -> bool:
    """A run is due after a failure's retry delay; otherwise on the first tick, when the
    interval since the last success has passed, or when enough new events arrived."""
    if state.last_failure is not None and (
        state.last_success is None or state.last_failure > state.last_success
    ):
        return now - state.last_failure >= policy.retry_s
    if state.last_success is None:
        return True
    if policy.interval_s is not None and now - state.last_success >= policy.interval_s:
        return True
    return policy.min_new_events is not None and new_events >= policy.min_new_events


@contextmanager
def exclusive(store: Path) -> Iterator[None]:
    """Hold the store's training lock, or raise `RunInProgressError` at once."""
    store.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(store / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInProgressError(f"{store}: another training run holds {LOCK}") from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def tick(
    policy: Policy, state: State, *, store: Path, now: float, new_events: int,
    run: Callable[[], object],
) -> bool:
    """Run once when due; returns whether a run succeeded. Errors are logged, not raised."""
    if not is_due(policy, state, now, new_events):
        return False
    try:
        with exclusive(store):
            run()
    except RunInProgressError as error:
        log.info("skipped: %s", error)
        return False
    except Exception:  # noqa: BLE001 -- the scheduler outlives a failed run
        log.exception("training run failed; production unchanged, retry in %.0f s",
                      policy.retry_s)
        state.last_failure = now
        return False
    state.last_success = now
    return True


def loop(
    policy: Policy, *, store: Path, poll_s: float, count_new_events: Callable[[], int],
    run: Callable[[], object], clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep, ticks: int | None = None,
) -> State:
    """Check every `poll_s` seconds (forever, or `ticks` times)."""
    state = State()
    done = 0
    while ticks is None or done < ticks:
        try:
            new_events = count_new_events()
        except Exception:  # noqa: BLE001 -- a broker hiccup must not stop the scheduler
            log.exception("could not count new events")
            new_events = 0
        tick(policy, state, store=store, now=clock(), new_events=new_events, run=run)
        done += 1
        if ticks is None or done < ticks:
            sleep(poll_s)
    return state
