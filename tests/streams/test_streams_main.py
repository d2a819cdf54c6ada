"""streams.__main__: bad command lines and bad settings stop start-up with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args], cwd=REPO_ROOT, env={**os.environ, **env},
        capture_output=True, text=True, timeout=60,
    )


def test_unknown_command_prints_usage() -> None:
    result = run("serve")
    assert result.returncode == 2
    assert "usage: python -m streams [worker | dlq" in result.stderr


def test_invalid_setting_is_reported_before_anything_starts() -> None:
    result = run("worker", STREAMREC_STREAMS_TOPIC_PARTITIONS="0")
    assert result.returncode == 2
    assert "STREAMREC_STREAMS_" in result.stderr and "topic_partitions" in result.stderr


def test_unknown_event_type_in_weights_is_rejected() -> None:
    result = run(STREAMREC_STREAMS_WEIGHTS='{"like": 1.0}')
    assert result.returncode == 2
    assert "unknown event types ['like']" in result.stderr


def test_dlq_redrive_requires_the_reasons_it_is_for() -> None:
    result = run("dlq", "redrive")
    assert result.returncode == 2
    assert "--reason" in result.stderr
