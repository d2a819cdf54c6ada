"""``python -m serving``: read settings, build the server, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from serving.errors import ServingError
from serving.server import serve
from serving.settings import ServingSettings

log = logging.getLogger("serving")


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m serving   (settings: STREAMREC_SERVING_* variables)", file=sys.stderr)
        return 2
    try:
        settings = ServingSettings()
    except ValidationError as error:
        print(f"invalid STREAMREC_SERVING_* settings:\n{error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if settings.event_loop == "uvloop":
            import uvloop  # libuv's loop: cheaper socket and callback handling per request

            uvloop.run(serve(settings))
        else:
            asyncio.run(serve(settings))
    except ServingError as error:
        log.error("cannot serve: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
