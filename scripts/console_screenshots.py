"""One screenshot per page of a running operator console, in headless Chromium.

    .venv/bin/python scripts/console_screenshots.py --user 1m_5780 --item 'Fargo (1996)' \\
        --out docs/console [--url http://127.0.0.1:8070/] [--token T]

Run while ``make demo`` serves (its console on 127.0.0.1:8070); writes overview.png,
experiments.png, models.png, user.png, item.png and deadletters.png into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8070/")
    parser.add_argument("--user", required=True, help="a user the user page shows")
    parser.add_argument("--item", required=True, help="an item the item page shows")
    parser.add_argument("--token", default="", help="the console's token, if it has one")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    pages = {
        "overview": "/", "experiments": "/experiments", "models": "/models",
        "user": "/user?" + urlencode({"user": args.user}),
        "item": "/item?" + urlencode({"item": args.item}), "deadletters": "/deadletters",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        tab = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        if args.token:
            tab.goto(f"{base}/login")
            tab.fill("#token", args.token)
            tab.click("#sign-in")
        for name, path in pages.items():
            response = tab.goto(base + path, timeout=120_000)  # experiments reads topics
            if response is None or not response.ok:
                print(f"{name}: {base + path} answered "
                      f"{response.status if response else 'nothing'}", file=sys.stderr)
                return 1
            tab.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
            print(f"{name}: {args.out / f'{name}.png'}")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
