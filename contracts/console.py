"""How the command-line tools talk: results on stdout; log lines on stderr without the
Kafka clients' chatter unless asked for; progress as a bar on a terminal and as one log
line per interval anywhere else (a log file, a pipe)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# kafka-python and aiokafka log every connection, metadata refresh and group step at INFO.
KAFKA_CLIENT_LOGGERS = ("kafka", "aiokafka")
PROGRESS_INTERVAL_S = 30.0
_LOG_LINE = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) in {elapsed}, {rate_fmt}{postfix}"
_LOG_LINE_NO_TOTAL = "{desc}: {n_fmt} {unit} in {elapsed}, {rate_fmt}{postfix}"

progress_log = logging.getLogger("progress")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: also log the Kafka clients' INFO lines."""
    parser.add_argument("--verbose", action="store_true",
                        help="also log the Kafka clients' INFO lines")


def setup_logging(level: str = "info", *, verbose: bool = False) -> None:
    """Log to stderr at `level`; the Kafka clients only from WARNING on, unless `verbose`
    or `level` is debug."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    quiet = not verbose and level.lower() != "debug"
    for name in KAFKA_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)


class _LogLines:
    """A file for tqdm that turns each of its refreshes into one log line."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            self._logger.info("%s", line)

    def flush(self) -> None:
        pass


class _IntervalBar(tqdm):  # type: ignore[type-arg]
    """A bar whose postfix and description changes wait for its next interval too."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)

    def close(self) -> None:
        if not self.disable and self.n == self.last_print_n:
            self.leave = False  # the last line already said it
        super().close()


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, total: float | None = None,
             unit: str = "it", enabled: bool = True, interval_s: float = PROGRESS_INTERVAL_S,
             stream: TextIO | None = None, logger: logging.Logger = progress_log) -> tqdm:  # type: ignore[type-arg]
    """A tqdm bar on `stream` (stderr) when it is a terminal; otherwise one ``logger`` line
    when it starts, every `interval_s` and at the end, never a carriage return."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if stream.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream)
    known = total is not None or hasattr(iterable, "__len__")
    return _IntervalBar(iterable, total=total, desc=desc, unit=unit, file=_LogLines(logger),
                        mininterval=interval_s, maxinterval=interval_s, ascii=True,
                        bar_format=_LOG_LINE if known else _LOG_LINE_NO_TOTAL)
