"""The drift page of the web UI and its JSON API (a server feature: see server/features.py).

GET /ui/drift                    the latest scheduled check, and a form to run a comparison
GET /ui/drift?reference=..&current=..[&embedder=..&alias=..]   that comparison, shown
GET /ui/drift/report.html?...    the same as a self-contained HTML file (download)
GET /api/drift?reference=..&current=..   the JSON summary
GET /api/drift/latest            the latest scheduled check (404 before the first)

The page extends the web UI's base template (same look, link back to /ui). Comparisons
run in a worker thread, one at a time, and a result is reused for a minute for the same
parameters. Also starts the scheduled check when ``drift.reference`` is configured.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import jinja2
import orjson
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import GatewayError, InvalidRequest, NotFound, ShipyardError
from .schedule import attach

HERE = Path(__file__).resolve().parent
SERVER_TEMPLATES = HERE.parent / "server" / "templates"
CACHE_S = 60.0
CACHE_MAX = 8
PARAMS = ("reference", "current", "embedder", "alias", "max_semantic")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
           "x-frame-options": "DENY", "cache-control": "no-store"}


class _Error:
    """What the base template shows in its error box."""

    def __init__(self, type_: str, message: str, param: str | None = None) -> None:
        self.type, self.message, self.param = type_, message, param


def _as_error(exc: Exception) -> tuple[_Error, int]:
    if isinstance(exc, GatewayError):
        return _Error(exc.type, exc.message, exc.param), exc.status
    from .deps import MissingDependency

    if isinstance(exc, MissingDependency):
        return _Error("missing_dependency", str(exc)), 501
    return _Error("error", str(exc)), 500


def _env() -> jinja2.Environment:
    from .. import __version__

    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(str(HERE / "templates"))]
    if (SERVER_TEMPLATES / "base.html").exists():
        loaders.append(jinja2.FileSystemLoader(str(SERVER_TEMPLATES)))
    else:  # the web UI's templates are not there: a minimal stand-in
        loaders.append(jinja2.DictLoader({"base.html": (
            "<!doctype html><html><head><meta charset='utf-8'><title>{% block title %}{% endblock %} · Shipyard"
            "</title></head><body><a href='/ui'>Shipyard</a>{% if error %}<div role='alert' id='page-error'>"
            "{{ error.message }}</div>{% endif %}{% block content %}{% endblock %}</body></html>")}))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True)
    env.globals.update(version=__version__)
    return env


def _params(q: Any) -> dict[str, str]:
    return {k: q[k].strip() for k in PARAMS if q.get(k, "").strip()}


class DriftPages:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.env = _env()
        self._lock = threading.Lock()
        self._cache: dict[tuple[tuple[str, str], ...], tuple[float, dict[str, Any]]] = {}

    # ---- analysis --------------------------------------------------------------------
    def _analyze(self, params: dict[str, str], loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
        from .analyze import DEFAULT_MAX_SEMANTIC, run_analysis
        from .embedders import get_embedder

        if self.engine.store is None:
            raise InvalidRequest("Drift analysis needs a store (the config has store: none).")
        if "reference" not in params:
            raise InvalidRequest("Missing value for 'reference': e.g. dataset:NAME or window:30d..7d",
                                 param="reference")
        try:
            cap = int(params.get("max_semantic", DEFAULT_MAX_SEMANTIC))
        except ValueError:
            raise InvalidRequest("Invalid value for 'max_semantic': must be a whole number",
                                 param="max_semantic") from None
        if not 0 <= cap <= 20_000:
            raise InvalidRequest("Invalid value for 'max_semantic': must be between 0 and 20000", param="max_semantic")
        key = tuple(sorted(params.items()))
        with self._lock:  # one comparison at a time: they are CPU-heavy
            hit = self._cache.get(key)
            if hit and time.time() - hit[0] < CACHE_S:
                return hit[1]
            name = params.get("embedder", "light")
            embedder = get_embedder(name, engine=self.engine, loop=loop) if cap else None
            summary = run_analysis(self.engine.store, params["reference"], params.get("current", "7d"),
                                   embedder=embedder, alias=params.get("alias"), max_semantic=cap,
                                   semantic=cap > 0)
            if len(self._cache) >= CACHE_MAX:
                self._cache.pop(min(self._cache, key=lambda k: self._cache[k][0]))
            self._cache[key] = (time.time(), summary)
            return summary

    async def analyze(self, params: dict[str, str]) -> dict[str, Any]:
        return await run_in_threadpool(self._analyze, params, asyncio.get_running_loop())

    # ---- routes ----------------------------------------------------------------------
    def _render(self, ctx: dict[str, Any], status: int = 200) -> Response:
        ctx.setdefault("nav", "drift")
        ctx.setdefault("error", None)
        html = self.env.get_template("drift.html").render(**ctx)
        return Response(html, status_code=status, media_type="text/html; charset=utf-8", headers=HEADERS)

    async def page(self, request: Request) -> Response:
        from .report import CSS, render_body

        params = _params(request.query_params)
        sched = getattr(self.engine, "drift_scheduler", None)
        ctx: dict[str, Any] = {"form": {"reference": params.get("reference", sched.cfg.reference if sched else ""),
                                        "current": params.get("current", sched.cfg.window if sched else "7d"),
                                        "embedder": params.get("embedder", "light"),
                                        "alias": params.get("alias", ""),
                                        "max_semantic": params.get("max_semantic", "")},
                               "css": Markup(CSS), "report": None, "schedule": sched.state() if sched else None,
                               "scheduled": False, "download": None}
        summary = None
        if "reference" in params:
            try:
                summary = await self.analyze(params)
            except (ShipyardError, ValueError) as exc:
                err, status = _as_error(exc)
                ctx["error"] = err
                return self._render(ctx, status)
            ctx["download"] = "/ui/drift/report.html?" + "&".join(
                f"{k}={_quote(v)}" for k, v in params.items())
        elif sched is not None and sched.last is not None:
            summary, ctx["scheduled"] = sched.last, True
        if summary is not None:
            ctx["report"] = Markup(render_body(summary))  # render_body escapes every value itself
        return self._render(ctx)

    async def report_file(self, request: Request) -> Response:
        from .report import render_html

        try:
            summary = await self.analyze(_params(request.query_params))
        except (ShipyardError, ValueError) as exc:
            err, status = _as_error(exc)
            return _json({"error": {"message": err.message, "type": err.type, "param": err.param}}, status)
        return Response(render_html(summary), media_type="text/html; charset=utf-8",
                        headers={**HEADERS, "content-disposition": 'attachment; filename="drift-report.html"'})

    async def api(self, request: Request) -> Response:
        try:
            summary = await self.analyze(_params(request.query_params))
        except (ShipyardError, ValueError) as exc:
            err, status = _as_error(exc)
            return _json({"error": {"message": err.message, "type": err.type, "param": err.param}}, status)
        return _json(summary)

    async def latest(self, request: Request) -> Response:
        sched = getattr(self.engine, "drift_scheduler", None)
        if sched is None:
            err = NotFound("No scheduled drift check is configured (set drift.reference in the config).")
            return _json(err.to_dict(), 404)
        if sched.last is None:
            msg = "The scheduled drift check has not finished yet" + (
                f" (last error: {sched.last_error})" if sched.last_error else "") + "."
            return _json({**NotFound(msg).to_dict(), "schedule": sched.state()}, 404)
        return _json({"schedule": sched.state(), "summary": sched.last})


def _quote(v: str) -> str:
    from urllib.parse import quote

    return quote(v, safe="")


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, default=str), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def routes(engine: Any) -> list[Any]:
    attach(engine)  # the scheduled check, when configured
    pages = DriftPages(engine)
    return [
        Route("/ui/drift", pages.page, methods=["GET"]),
        Route("/ui/drift/report.html", pages.report_file, methods=["GET"]),
        Route("/api/drift", pages.api, methods=["GET"]),
        Route("/api/drift/latest", pages.latest, methods=["GET"]),
    ]
