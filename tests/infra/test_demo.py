"""scripts/demo.sh stops every process it started within 10 s of Ctrl-C, even ones that
ignore SIGINT and SIGTERM (run with a stand-in for Python, so no stack is needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 10.0

# Every `python -m ...` the demo runs: quick for the one-shot commands, and for the
# long-running ones a process that ignores both signals and sleeps (the worst case).
STAND_IN = """#!/usr/bin/env bash
echo $$ >> "$PIDS"
case "$2 $3" in
  "training social-graph") echo 1m_1 > "$DEMO_DATA_DIR/social_user"; exit 0 ;;
esac
case "$2" in
  serving.cli.client|ingest) exit 0 ;;
esac
trap '' INT TERM
while :; do sleep 0.1; done
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _as_from_a_terminal() -> None:
    """Start the demo with Ctrl-C's and TERM's default handling and neither blocked, as a
    terminal's shell does: a shell that starts with a signal ignored cannot trap it, and
    the test process may hold either from code run earlier in the same session."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def test_ctrl_c_stops_everything_the_demo_started(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    pids = tmp_path / "pids"
    env = {**os.environ, "DEMO_PYTHON": str(python), "DEMO_LOG_DIR": str(tmp_path / "log"),
           "DEMO_STOP_WAIT_S": "3", "PIDS": str(pids), "DEMO_DATA_DIR": str(tmp_path / "data")}
    demo = subprocess.Popen(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_as_from_a_terminal)
    ready = threading.Event()
    output: list[str] = []

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line)
            if line.startswith("Ctrl-C stops"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(60), "".join(output)
        deadline = time.monotonic() + 10.0
        while len(pids.read_text().split()) < 11 and time.monotonic() < deadline:
            time.sleep(0.05)  # the trainer starts as the last line is printed
        started = [int(line) for line in pids.read_text().split()]
        # worker, server, console, wait, catalog, follow graph, relations, replay, demo, the
        # social user's recommendations, trainer
        assert len(started) == 11
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
        demo.wait(timeout=STOP_WITHIN_S)
        deadline = time.monotonic() + 1.0
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in started if _alive(pid)] == [], "".join(output)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert "did not stop within 3 s: killed" in "".join(output)
