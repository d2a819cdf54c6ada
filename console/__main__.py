"""``python -m console``: the operator console on ``STREAMREC_CONSOLE_HOST:PORT``.

Reads its settings, builds the clients of each deployable's public face, serves the
page, samples the metrics in the background, and stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from console.app import Parts, create_app
from console.deadletters import Redrives
from console.settings import ConsoleSettings
from console.sources import MetricsHistory, OnlineState, Serving
from contracts.console import setup_logging
from contracts.security import async_redis_client

log = logging.getLogger("console")
# How long a stop waits for open connections (a browser's keep-alive ones, a page still
# reading a topic) before closing them: a stopped console goes within seconds.
SHUTDOWN_TIMEOUT_S = 3.0


async def serve(settings: ConsoleSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    token = settings.serving_token.get_secret_value() if settings.serving_token else None
    async with aiohttp.ClientSession() as session:
        parts = Parts(
            settings=settings,
            serving=Serving(target=settings.serving_target, admin_target=settings.admin_target,
                            token=token, deadline_s=settings.grpc_deadline_s),
            history=MetricsHistory(session, streams_url=settings.streams_metrics_url,
                                   serving_url=settings.serving_metrics_url,
                                   interval_s=settings.sample_interval_s, keep=settings.history_points),
            online=OnlineState(async_redis_client(settings.redis_url, settings), settings.redis_prefix),
            redrives=Redrives(settings),
        )
        runner = web.AppRunner(create_app(parts), access_log=None,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        sampler = asyncio.create_task(parts.history.run())
        port = runner.addresses[0][1]
        log.info("console on http://%s:%s/%s", settings.host, port,
                 " (the console token is required)" if settings.token else "")
        try:
            await stop.wait()
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await runner.cleanup()
            await parts.redrives.close()
            await parts.serving.close()
            await parts.online.close()


def main() -> int:
    try:
        settings = ConsoleSettings()
    except ValidationError as error:
        print(f"console: bad settings (STREAMREC_CONSOLE_*):\n{error}", file=sys.stderr)
        return 2
    setup_logging()
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
