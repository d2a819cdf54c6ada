"""``python -m serving``: read settings, build the server (or, with ``workers`` > 1, the
supervisor of that many), serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys

from pydantic import ValidationError
from redis.exceptions import RedisClusterException

from contracts.security import SecurityError, probe_redis
from serving.errors import ServingError
from serving.server import serve
from serving.settings import ServingSettings
from serving.workers import supervise

log = logging.getLogger("serving")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent() -> None:
    """SIGTERM to this process when its parent dies (Linux), so a worker never outlives
    its supervisor; a parent that is already gone means stopping now."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m serving   (settings: STREAMREC_SERVING_* variables)", file=sys.stderr)
        return 2
    try:
        settings = ServingSettings()
    except ValidationError as error:
        print(f"invalid STREAMREC_SERVING_* settings:\n{error}", file=sys.stderr)
        return 2
    several = settings.workers > 1 or settings.reuse_port  # the supervisor or one of its workers
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s " + ("[%(process)d] " if several else "") + "%(name)s: %(message)s",
    )
    if settings.stop_with_parent and sys.platform == "linux":  # prctl is Linux's
        _stop_with_parent()
    try:  # a refused Redis password is no outage to wait out: stop here, in one line
        asyncio.run(probe_redis(settings.redis_url, settings))
    except SecurityError as error:
        log.error("cannot serve: %s", error)
        return 1
    except RedisClusterException as error:  # no outage to stop for: Recommend is UNAVAILABLE
        log.warning("the Redis Cluster is not usable yet (%s)", error)
    main_task = supervise(settings) if settings.workers > 1 else serve(settings)
    try:
        if settings.event_loop == "uvloop":
            import uvloop  # libuv's loop: cheaper socket and callback handling per request

            status = uvloop.run(main_task)
        else:
            status = asyncio.run(main_task)
    except ServingError as error:
        log.error("cannot serve: %s", error)
        return 1
    except OSError as error:  # the public port is taken
        log.error("cannot serve: %s", error)
        return 1
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
