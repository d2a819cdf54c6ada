"""``python -m serving`` and ``python -m serving.cli.client`` as processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import Stack
from serving_harness import exact_nearest, server_env, unit_rows

from protos import events_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bad_settings_stop_start_up_with_exit_code_2() -> None:
    env = dict(os.environ, STREAMREC_SERVING_MAX_K="0")
    done = subprocess.run([sys.executable, "-m", "serving"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid STREAMREC_SERVING_* settings" in done.stderr and "max_k" in done.stderr


def test_an_unreadable_artifact_stops_start_up_with_exit_code_1(tmp_path: Path) -> None:
    (tmp_path / "production.json").write_text('{"version": "v9"}')
    env = dict(os.environ, STREAMREC_SERVING_ARTIFACT_DIR=str(tmp_path), STREAMREC_SERVING_PORT="0")
    done = subprocess.run([sys.executable, "-m", "serving"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot serve: cannot read" in done.stderr and "v9/manifest.json" in done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_stops_start_up_with_exit_code_1(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, STREAMREC_SERVING_ARTIFACT_DIR=str(tmp_path), STREAMREC_SERVING_PORT=str(port),
                   STREAMREC_SERVING_ADMIN_PORT="0", STREAMREC_SERVING_WORKERS=workers)
        done = subprocess.run([sys.executable, "-m", "serving"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "cannot serve:" in done.stderr and ("Address already in use" in done.stderr
                                               or f"cannot listen on 127.0.0.1:{port}" in done.stderr)
    assert "Traceback" not in done.stderr and "Unclosed" not in done.stderr


async def _client(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "serving.cli.client", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.integration
async def test_server_process_answers_the_client_and_stops_on_sigterm(stack: Stack) -> None:
    settings = stack.settings()
    env = server_env(settings)
    vectors = unit_rows(np.random.default_rng(0), 5, settings.dim)
    catalog = {f"m{n}": vectors[n] for n in range(5)}
    await stack.publish_vectors(catalog)
    await stack.publish_items([events_pb2.Item(item_id="m1", title="Movie One", categories=["Drama"])])
    await stack.set_popular({"m1": 9.0, "m2": 5.0})

    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "serving", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert server.stdout is not None
    log: list[str] = []
    try:
        port = None
        while port is None:
            line = (await asyncio.wait_for(server.stdout.readline(), timeout=60)).decode()
            assert line, "server exited:\n" + "".join(log)
            log.append(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        target = f"127.0.0.1:{port}"

        assert (await _client("--target", target, "wait", "--timeout", "60"))[0] == 0
        code, out, err = await _client("--target", target, "recommend", "--user", "nobody", "-k", "2")
        assert code == 0, err
        assert "nobody: popular, model base" in out
        assert re.search(r"1\.\s+9\.0000\s+m1\s+Movie One\s+\[Drama\]\s+\(popular with other shoppers\)", out)
        code, out, err = await _client("--target", target, "similar", "--item", "m0", "-k", "3")
        assert code == 0, err
        assert out.startswith("items similar to m0 (model base):")
        listed = re.findall(r"(m\d)\s+\(similar to this item\)", out)
        assert listed == exact_nearest(catalog, catalog["m0"], 3, {"m0"})
        code, _, err = await _client("--target", target, "recommend", "--user", "u", "-k", "0")
        assert (code, err.strip()) == (1, "INVALID_ARGUMENT: k must be between 1 and 50, got 0")
    finally:
        server.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(server.stdout.read(), timeout=60)
        log.append(rest.decode())
        await server.wait()
    text = "".join(log)
    assert server.returncode == 0, text
    assert "signal received: NOT_SERVING" in text and "stopped" in text
