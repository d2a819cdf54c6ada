"""contracts.console: Kafka client logging off unless asked for; progress as a bar only on
a terminal, as one log line per interval elsewhere."""

from __future__ import annotations

import io
import logging

import pytest

from contracts.console import KAFKA_CLIENT_LOGGERS, progress_bar, setup_logging


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "progress"]


def test_off_a_terminal_progress_is_a_log_line_per_interval_not_a_bar(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="progress"):
        with progress_bar(total=1000, desc="items", unit="item", stream=stream,
                          interval_s=3600) as bar:
            for n in range(1000):
                bar.update(1)
                bar.set_postfix(n=n)  # a postfix waits for the interval too
    assert stream.getvalue() == ""
    lines = _lines(caplog)
    assert lines[0].startswith("items: 0/1000 item (0%)")
    assert lines[-1].startswith("items: 1000/1000 item (100%)")
    assert len(lines) == 2  # started, finished: nothing in between within the interval
    assert not any("\r" in line or "\n" in line for line in lines)


def test_every_interval_gets_its_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="progress"):
        for _ in progress_bar(range(5), desc="steps", stream=io.StringIO(), interval_s=0):
            pass
    assert [line.split(" ")[1] for line in _lines(caplog)] == [f"{n}/5" for n in range(6)]


def test_on_a_terminal_it_is_a_bar_and_disabled_it_is_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    terminal = _Terminal()
    with caplog.at_level(logging.INFO, logger="progress"):
        for _ in progress_bar(range(3), desc="steps", stream=terminal):
            pass
        for _ in progress_bar(range(3), desc="quiet", stream=io.StringIO(), enabled=False):
            pass
    assert "\r" in terminal.getvalue() and "steps" in terminal.getvalue()
    assert _lines(caplog) == []


@pytest.mark.parametrize(("level", "verbose", "kafka_level"), [
    ("info", False, logging.WARNING), ("info", True, logging.NOTSET),
    ("debug", False, logging.NOTSET),
])
def test_kafka_clients_log_info_only_when_asked(level: str, verbose: bool,
                                                kafka_level: int) -> None:
    try:
        setup_logging(level, verbose=verbose)
        assert {logging.getLogger(name).level for name in KAFKA_CLIENT_LOGGERS} == {kafka_level}
    finally:
        for name in KAFKA_CLIENT_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
