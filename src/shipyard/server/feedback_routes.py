"""Feedback and outcome routes (a server feature: see features.py).

POST /api/feedback                 an explicit or implicit feedback event (API key)
POST /api/outcomes                 a business metric for a session or trace (API key)
GET  /api/feedback                 events, newest first (?trace_id=, since/start/end, kind, source, limit)
GET  /api/feedback/stats           rates over time by alias | model | prompt_version | route
GET  /api/traces/{trace_id}/feedback   one trace's feedback, human labels and outcomes

The POST routes are authorised by ``shipyard.feedback.auth.authorize_feedback`` and answer
CORS preflights for ``feedback.allow_origins`` (browser front ends, static/shipyard-feedback.js).
The GET routes are the read API the web UI uses, like /api/traces. Store work runs in a
worker thread.
"""

from __future__ import annotations

from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import GatewayError, InvalidRequest
from ..feedback.auth import authorize_feedback
from ..feedback.model import KINDS, SOURCES, parse_feedback, parse_outcome
from ..feedback.service import MAX_LIST, service_for
from ..feedback.stats import DIMENSIONS, feedback_stats
from . import api
from .app import error_response, read_json

STATS_PARAMS = frozenset({"since", "start", "end", "bucket", "by", "source", "kind"})
LIST_PARAMS = frozenset({"trace_id", "since", "start", "end", "kind", "source", "limit"})
CORS_HEADERS = "authorization, content-type, idempotency-key"


def _cors(request: Request, allowed: list[str]) -> dict[str, str]:
    origin = request.headers.get("origin")
    if not origin or not allowed:
        return {}
    if "*" in allowed or origin in allowed:
        return {"access-control-allow-origin": origin, "vary": "Origin",
                "access-control-allow-headers": CORS_HEADERS, "access-control-allow-methods": "POST, OPTIONS",
                "access-control-max-age": "600"}
    return {}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(api.dumps(data), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store", **(headers or {})})


def _check(params: Any, allowed: frozenset[str]) -> dict[str, str]:
    for key in params:
        if key not in allowed:
            raise InvalidRequest(f"Unknown query parameter '{key}'. Known parameters: {', '.join(sorted(allowed))}.",
                                 param=key, code="unknown_parameter")
    return {k: v.strip() for k, v in params.items() if v.strip()}


def _choice(p: dict[str, str], key: str, choices: tuple[str, ...]) -> str | None:
    v = p.get(key)
    if v is not None and v not in choices:
        raise InvalidRequest(f"Invalid value for '{key}': expected one of {', '.join(choices)}; got {v!r}",
                             param=key, code="invalid_parameter")
    return v


def parse_stats(params: Any) -> dict[str, Any]:
    p = _check(params, STATS_PARAMS)
    start, end, bucket = api.parse_dashboard({k: p[k] for k in ("since", "start", "end", "bucket") if k in p})
    return {"start": start, "end": end, "bucket_s": bucket, "by": _choice(p, "by", DIMENSIONS) or "alias",
            "source": _choice(p, "source", SOURCES), "kind": _choice(p, "kind", KINDS)}


def routes(engine: Any) -> list[Route]:
    cfg = engine.config.feedback
    limit = engine.config.server.max_body_bytes
    if engine.store is not None:
        service_for(engine)  # listen to finished calls from the start (feedback right after a response)

    def svc() -> Any:
        return service_for(engine)

    async def preflight(request: Request) -> Response:
        return Response(status_code=204, headers=_cors(request, cfg.allow_origins))

    async def post_event(request: Request, parse: Callable[[Any, str | None], Any], method: str) -> Response:
        """POST an event: authorize, parse the body, record it with the service's ``method``
        (201 when new, 200 when the idempotency key was seen)."""
        cors = _cors(request, cfg.allow_origins)
        try:
            principal = authorize_feedback(request)
            event = parse(await read_json(request, limit), request.headers.get("idempotency-key"))
            row, created = await run_in_threadpool(getattr(svc(), method), event, principal)
        except GatewayError as exc:
            return error_response(exc, cors)
        except ClientDisconnect:
            return Response(status_code=499)
        return _json(row, 201 if created else 200, cors)

    async def post_feedback(request: Request) -> Response:
        return await post_event(request, parse_feedback, "record")

    async def post_outcome(request: Request) -> Response:
        return await post_event(request, parse_outcome, "record_outcome")

    async def list_feedback(request: Request) -> Response:
        try:
            p = _check(request.query_params, LIST_PARAMS)
            start = end = None
            if any(k in p for k in ("since", "start", "end")) or "trace_id" not in p:
                start, end = api.parse_window(p)
            n = p.get("limit", "100")
            if not n.isdigit() or not 1 <= int(n) <= MAX_LIST:
                raise InvalidRequest(f"Invalid value for 'limit': an integer from 1 to {MAX_LIST}", param="limit")
            rows = await run_in_threadpool(lambda: svc().list_feedback(
                trace_id=p.get("trace_id"), start=start, end=end, kind=_choice(p, "kind", KINDS),
                source=_choice(p, "source", SOURCES), limit=int(n)))
        except GatewayError as exc:
            return error_response(exc)
        return _json({"object": "list", "data": rows})

    async def stats(request: Request) -> Response:
        try:
            args = parse_stats(request.query_params)
            s = svc()
            data = await run_in_threadpool(lambda: feedback_stats(
                s.store, args["start"], args["end"], args["bucket_s"], args["by"], source=args["source"],
                kind=args["kind"], service=s))
        except GatewayError as exc:
            return error_response(exc)
        return _json(data)

    async def trace_feedback(request: Request) -> Response:
        try:
            data = await run_in_threadpool(svc().trace_summary, request.path_params["trace_id"])
        except GatewayError as exc:
            return error_response(exc)
        return _json(data)

    return [
        Route("/api/feedback", post_feedback, methods=["POST"]),
        Route("/api/feedback", list_feedback, methods=["GET"]),
        Route("/api/feedback", preflight, methods=["OPTIONS"]),
        Route("/api/feedback/stats", stats, methods=["GET"]),
        Route("/api/outcomes", post_outcome, methods=["POST"]),
        Route("/api/outcomes", preflight, methods=["OPTIONS"]),
        Route("/api/traces/{trace_id}/feedback", trace_feedback, methods=["GET"]),
    ]
