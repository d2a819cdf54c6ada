"""The console's web application: aiohttp handlers that call the edges
(:mod:`console.sources`, :mod:`console.deadletters`) and render Jinja2 templates."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from console import charts
from console.catalog import catalog_entry
from console.deadletters import Redrives, summary
from console.experiments import report
from console.figures import overview, series
from console.settings import ConsoleSettings
from console.sources import MetricsHistory, OnlineState, Serving, manifests

COOKIE = "streamrec_console"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Parts:
    """What the handlers use, built once by ``__main__`` (or a test) and passed in."""

    settings: ConsoleSettings
    serving: Serving
    history: MetricsHistory
    online: OnlineState
    redrives: Redrives


PARTS = web.AppKey("parts", Parts)
TEMPLATES = web.AppKey("templates", Environment)


def _when(ms: int | float | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def templates() -> Environment:
    env = Environment(loader=PackageLoader("console"), autoescape=select_autoescape())
    env.filters.update(when=_when, number=_number, ms=_ms)
    env.globals.update(line_chart=charts.line_chart, bar_chart=charts.bar_chart,
                       loss_points=_loss_points, ctr_bars=_ctr_bars)
    return env


def render(request: web.Request, name: str, http_status: int = 200, **context: Any) -> web.Response:
    page = request.app[TEMPLATES].get_template(name).render(page=name.split(".")[0], **context)
    return web.Response(text=page, content_type="text/html", status=http_status)


# --- access ------------------------------------------------------------------------------


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With a token configured, every page but the login form asks for it (cookie or
    ``Authorization: Bearer``)."""
    token = request.app[PARTS].settings.token
    if token is None or request.path in ("/login", "/healthz"):
        return await handler(request)
    given = request.cookies.get(COOKIE, "")
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = bearer.strip()
    if given and hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        return await handler(request)
    if request.method == "GET":
        raise web.HTTPFound(f"/login?next={request.path_qs}")
    raise web.HTTPUnauthorized(text="the console's token is required")


async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", next=request.query.get("next", "/"), wrong=False)


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    token = request.app[PARTS].settings.token
    given = str(form.get("token", ""))
    target = str(form.get("next", "/"))
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    if token is None or hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        response = web.HTTPFound(target)
        response.set_cookie(COOKIE, given, httponly=True, samesite="Strict")
        raise response
    return render(request, "login.html", http_status=401, next=target, wrong=True)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


# --- pages -------------------------------------------------------------------------------


async def _status(parts: Parts) -> tuple[Any, str]:
    """serving's ModelStatus, or None and why not."""
    try:
        return await parts.serving.status(), ""
    except grpc.aio.AioRpcError as error:
        return None, f"serving Admin: {error.code().name}: {error.details()}"


async def overview_page(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    snapshots = list(parts.history.snapshots)
    if not snapshots:
        snapshots.append(await parts.history.sample())
    older = snapshots[-2] if len(snapshots) > 1 else None
    status, status_error = await _status(parts)
    return render(request, "overview.html", figures=overview(snapshots[-1], older),
                  charts=series(snapshots), status=status, status_error=status_error,
                  scrape_errors=parts.history.errors, sampled_at=snapshots[-1].at * 1000)


async def user_page(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    user_id = request.query.get("user", "").strip()
    if not user_id:
        return render(request, "user.html", user_id="", state=None, answer=None, error="")
    state = await parts.online.user(user_id)
    answer, error = None, ""
    try:
        answer = await parts.serving.recommend(user_id, int(request.query.get("k", "10")))
    except grpc.aio.AioRpcError as failure:
        error = f"{failure.code().name}: {failure.details()}"
    return render(request, "user.html", user_id=user_id, state=state, answer=answer, error=error)


async def item_page(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    item_id = request.query.get("item", "").strip()
    answer, error, entry = None, "", None
    if item_id:
        entry = await asyncio.to_thread(catalog_entry, parts.settings, item_id)
        try:
            answer = await parts.serving.similar(item_id, int(request.query.get("k", "10")))
        except grpc.aio.AioRpcError as failure:
            error = f"{failure.code().name}: {failure.details()}"
    return render(request, "item.html", item_id=item_id, answer=answer, error=error, entry=entry)


async def models_page(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    found = await asyncio.to_thread(manifests, parts.settings.artifact_dir)
    status, status_error = await _status(parts)
    return render(request, "models.html", versions=found, status=status, status_error=status_error)


def _loss_points(manifest: dict[str, Any]) -> list[tuple[float, float | None]]:
    losses = (manifest.get("metrics", {}).get("training") or {}).get("losses") or []
    return [(float(epoch), float(loss)) for epoch, loss in enumerate(losses, start=1)]


async def _experiments(request: web.Request, *, http_status: int = 200,
                       error: str = "") -> web.Response:
    parts = request.app[PARTS]
    status, status_error = await _status(parts)
    found = await asyncio.to_thread(manifests, parts.settings.artifact_dir)
    reports, unattributed = await asyncio.to_thread(report, parts.settings)
    return render(request, "experiments.html", http_status=http_status, status=status,
                  status_error=status_error, versions=found, error=error,
                  reports=[reports[v] for v in sorted(reports)], unattributed=unattributed)


def _ctr_bars(reports: list[Any]) -> list[tuple[str, float]]:
    return [(r.version, 100 * r.click_through) for r in reports]


async def experiments_page(request: web.Request) -> web.Response:
    return await _experiments(request)


# A routing change: form fields -> (what the confirmation says, the call on Admin).
Change = Callable[[Serving, Any], tuple[str, Callable[[], Awaitable[Any]]]]


def _promote(serving: Serving, form: Any) -> tuple[str, Callable[[], Awaitable[Any]]]:
    version, uri = str(form["version"]), str(form.get("uri", ""))
    return f"Make {version} production?", lambda: serving.promote(version, uri)


def _rollback(serving: Serving, form: Any) -> tuple[str, Callable[[], Awaitable[Any]]]:
    return "Swap production and previous?", serving.rollback


def _split(serving: Serving, form: Any) -> tuple[str, Callable[[], Awaitable[Any]]]:
    version, uri = str(form.get("version", "")), str(form.get("uri", ""))
    percent = float(str(form["percent"]))
    text = (f"Send {percent:g} % of users to {version}?" if percent
            else "End the experiment (everyone on production)?")
    return text, lambda: serving.split(version, percent, uri)


CHANGES: dict[str, Change] = {"promote": _promote, "rollback": _rollback, "split": _split}


async def change_routing(request: web.Request) -> web.Response:
    """A routing change: first a confirmation page, then (``confirmed``) the Admin call."""
    parts = request.app[PARTS]
    action = request.match_info["action"]
    form = await request.post()
    try:
        question, call = CHANGES[action](parts.serving, form)
    except (KeyError, ValueError) as error:
        raise web.HTTPBadRequest(text=f"{action}: missing or bad field {error}") from error
    if form.get("confirmed") != "yes":
        return render(request, "confirm.html", question=question, action=f"/experiments/{action}",
                      fields={k: str(v) for k, v in form.items()})
    try:
        await call()
    except grpc.aio.AioRpcError as failure:
        return await _experiments(request, http_status=422,
                                  error=f"{action}: {failure.code().name}: {failure.details()}")
    raise web.HTTPSeeOther("/experiments")


async def deadletters_page(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    error, found = "", None
    try:
        found = await asyncio.to_thread(summary, parts.settings)
    except LookupError as missing:
        error = str(missing)
    jobs = sorted(parts.redrives.jobs.values(), key=lambda j: j.job_id, reverse=True)
    return render(request, "deadletters.html", summary=found, error=error, jobs=jobs)


async def redrive(request: web.Request) -> web.Response:
    form = await request.post()
    reason = str(form.get("reason", "")).strip()
    if not reason:
        raise web.HTTPBadRequest(text="name the reason to re-drive")
    if form.get("confirmed") != "yes":
        return render(request, "confirm.html", action="/deadletters/redrive", fields={"reason": reason},
                      question=f"Send every not yet re-driven dead letter of {reason} back to its "
                               "origin topic?")
    job = request.app[PARTS].redrives.start(reason)
    raise web.HTTPSeeOther(f"/deadletters/redrive/{job.job_id}")


async def redrive_progress(request: web.Request) -> web.Response:
    job = request.app[PARTS].redrives.jobs.get(int(request.match_info["job"]))
    if job is None:
        raise web.HTTPNotFound(text="no such re-drive")
    if request.query.get("format") == "json":
        return web.json_response(job.view())
    return render(request, "redrive.html", job=job)


def create_app(parts: Parts) -> web.Application:
    """The application over `parts` (nothing started: the caller runs it)."""
    app = web.Application(middlewares=[require_token])
    app[PARTS] = parts
    app[TEMPLATES] = templates()
    app.add_routes([
        web.get("/", overview_page), web.get("/experiments", experiments_page),
        web.post("/experiments/{action}", change_routing), web.get("/models", models_page),
        web.get("/user", user_page), web.get("/item", item_page),
        web.get("/deadletters", deadletters_page), web.post("/deadletters/redrive", redrive),
        web.get("/deadletters/redrive/{job}", redrive_progress),
        web.get("/login", login_form), web.post("/login", login), web.get("/healthz", healthz),
    ])
    return app
