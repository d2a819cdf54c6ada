"""``python -m training schedule`` stops promptly on SIGINT or SIGTERM in the middle of a
run, started the way a script starts it in the background (SIGINT ignored), and leaves
nothing half-trained behind: no version, no release."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from test_training_job_kafka import _produce_cycles, _records, _settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 10.0
TRAINING_STARTED = "steps/epoch"  # train()'s first line: the loop is about to run
START_TIMEOUT_S = 300.0


def _background_like_a_script() -> None:
    """What bash does to a background job without job control."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_schedule_stops_within_seconds_and_announces_nothing(
    signum: int, kafka_bootstrap: str, unique: str, create_topics: Callable[..., list[str]],
    tmp_path: Path, consumer: KafkaConsumer, producer: KafkaProducer,
) -> None:
    settings = _settings(unique, kafka_bootstrap, tmp_path / "store", create_topics)
    _produce_cycles(producer, settings)
    env = {
        **os.environ,
        "STREAMREC_TRAINING_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STREAMREC_TRAINING_TOPIC_ENRICHED": settings.topic_enriched,
        "STREAMREC_TRAINING_TOPIC_ITEMS": settings.topic_items,
        "STREAMREC_TRAINING_TOPIC_MODELS": settings.topic_models,
        "STREAMREC_TRAINING_TOPIC_ITEM_VECTORS": settings.topic_item_vectors,
        "STREAMREC_TRAINING_ARTIFACT_DIR": str(settings.artifact_dir),
        "STREAMREC_TRAINING_DEVICE": "cpu",
        "STREAMREC_TRAINING_MAX_LEN": "8",
        "STREAMREC_TRAINING_MAX_EPOCHS": "100000",  # trains until the budget ends
        "STREAMREC_TRAINING_TRAIN_TIME_BUDGET_S": "600",
        "STREAMREC_TRAINING_READ_TIMEOUT_S": "20",
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "training", "schedule"], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_background_like_a_script,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            if TRAINING_STARTED in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(START_TIMEOUT_S), "".join(lines[-40:])
        child.send_signal(signum)
        try:
            code = child.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_WITHIN_S:.0f} s after {signal.Signals(signum).name}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reader.join(timeout=10)
    output = "".join(lines)
    assert code == 0, output[-4000:]
    assert f"stopped by {signal.Signals(signum).name}" in output
    assert "\r" not in output  # progress off a terminal: log lines, no bar
    assert _records(consumer, settings.topic_models) == []
    assert _records(consumer, settings.topic_item_vectors) == []
    left = sorted(p.name for p in settings.artifact_dir.iterdir())
    assert left == [".training.lock"]  # no version, no staging directory, no pointer
