"""The JSON read API over recorded traces, used by the web UI (and handy with curl).

GET /api/traces              filtered, time-bounded, cursor-paginated trace summaries
GET /api/traces/{trace_id}   one trace with all its spans
GET /api/dashboard           per time bucket and model: requests, errors, latency, cost, tokens

Every query is bounded by a time range (7 days when none is given) and every store call
runs in a worker thread, so the event loop never waits on the database.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import time
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import GatewayError, InvalidRequest, NotFound
from ..store.base import DEFAULT_WINDOW_S, MAX_PAGE, TraceFilter, decode_cursor
from ..timeparse import parse_duration, parse_when
from .app import error_response

TRACE_PARAMS = frozenset({
    "since", "start", "end", "alias", "model", "user", "session", "status",
    "min_cost", "max_cost", "min_latency_ms", "max_latency_ms", "q", "limit", "cursor",
})
DASHBOARD_PARAMS = frozenset({"since", "start", "end", "bucket"})
STATUSES = ("ok", "error")
MAX_BUCKETS = 2000
# Bucket sizes the dashboard picks from when none is asked for (about 30-200 points).
AUTO_BUCKETS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400)


def jsonable(value: Any) -> Any:
    """orjson's fallback for values some stores return (Decimal from PostgreSQL, datetimes)."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, default=jsonable)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {message}", param=param, code="invalid_parameter")


def parse_time(param: str, value: str, now: float) -> float:
    """Unix seconds, a duration meaning 'that long ago' (24h), or an ISO 8601 time (UTC if
    no offset is given); a negative or infinite number is refused as such."""
    value = value.strip()
    try:
        ts = float(value)
    except ValueError:
        return parse_when(value, param, now)
    if not math.isfinite(ts) or ts < 0:
        raise _bad(param, f"expected a non-negative unix time; got {value!r}")
    return ts


def _number(param: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise _bad(param, f"expected a number; got {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise _bad(param, f"expected a non-negative number; got {value!r}")
    return x


def _values(params: Mapping[str, str], allowed: frozenset[str]) -> dict[str, str]:
    """Known, non-empty parameters (an empty form field means 'not set')."""
    for key in params:
        if key not in allowed:
            raise InvalidRequest(
                f"Unknown query parameter '{key}'. Known parameters: {', '.join(sorted(allowed))}.",
                param=key, code="unknown_parameter",
            )
    return {k: v.strip() for k, v in params.items() if v.strip()}


def parse_window(p: Mapping[str, str], now: float | None = None) -> tuple[float, float]:
    """The (start, end) a request asks for: since=24h, or start/end; the last 7 days by default."""
    now = time.time() if now is None else now
    if "since" in p and "start" in p:
        raise _bad("since", "give either 'since' or 'start', not both")
    end = parse_time("end", p["end"], now) if "end" in p else now + 60
    if "since" in p:
        start = parse_time("since", p["since"], now)
    elif "start" in p:
        start = parse_time("start", p["start"], now)
    else:
        start = end - DEFAULT_WINDOW_S
    if start >= end:
        raise _bad("start" if "start" in p else "since", "the time range is empty (start is not before end)")
    return start, end


def parse_trace_filter(params: Mapping[str, str], now: float | None = None) -> TraceFilter:
    """A TraceFilter from query parameters; InvalidRequest (400) naming the bad parameter."""
    p = _values(params, TRACE_PARAMS)
    start, end = parse_window(p, now)
    f = TraceFilter(start=start, end=end, alias=p.get("alias"), model=p.get("model"),
                    user_id=p.get("user"), session_id=p.get("session"), q=p.get("q"))
    if "status" in p:
        if p["status"] not in STATUSES:
            raise _bad("status", f"expected one of {', '.join(STATUSES)}; got {p['status']!r}")
        f.status = p["status"]
    for name in ("min_cost", "max_cost", "min_latency_ms", "max_latency_ms"):
        if name in p:
            setattr(f, name, _number(name, p[name]))
    for lo, hi in (("min_cost", "max_cost"), ("min_latency_ms", "max_latency_ms")):
        a, b = getattr(f, lo), getattr(f, hi)
        if a is not None and b is not None and a > b:
            raise _bad(lo, f"{lo} ({a:g}) is greater than {hi} ({b:g})")
    if "limit" in p:
        if not p["limit"].isdigit() or not 1 <= int(p["limit"]) <= MAX_PAGE:
            raise _bad("limit", f"expected an integer from 1 to {MAX_PAGE}; got {p['limit']!r}")
        f.limit = int(p["limit"])
    if "cursor" in p:
        decode_cursor(p["cursor"])  # raises InvalidRequest(param="cursor")
        f.cursor = p["cursor"]
    return f


def auto_bucket(start: float, end: float) -> int:
    span = end - start
    for b in AUTO_BUCKETS:
        if span / b <= 200:
            return b
    return math.ceil(span / 200 / 86400) * 86400


def parse_dashboard(params: Mapping[str, str], now: float | None = None) -> tuple[float, float, int]:
    p = _values(params, DASHBOARD_PARAMS)
    start, end = parse_window(p, now)
    if "bucket" not in p or p["bucket"] == "auto":
        return start, end, auto_bucket(start, end)
    raw = p["bucket"]
    secs = parse_duration(raw)
    if secs is None:
        if not raw.isdigit():
            raise _bad("bucket", f"expected seconds (e.g. 3600), a duration like 1h, or 'auto'; got {raw!r}")
        secs = float(raw)
    bucket = int(secs)
    if bucket < 1 or bucket != secs:
        raise _bad("bucket", f"expected a whole number of seconds, at least 1; got {raw!r}")
    if (end - start) / bucket > MAX_BUCKETS:
        raise _bad("bucket", f"{raw} buckets over this range would be more than {MAX_BUCKETS} points; "
                             "use a larger bucket or a shorter range")
    return start, end, bucket


def store_of(engine: Any) -> Any:
    store = getattr(engine, "store", None)
    if store is None:
        raise GatewayError("Traces are not recorded: this gateway runs with 'store: none'.",
                           status=503, code="store_disabled")
    return store


async def list_traces(engine: Any, f: TraceFilter) -> tuple[list[dict[str, Any]], str | None]:
    return await run_in_threadpool(store_of(engine).list_traces, f)


async def get_trace(engine: Any, trace_id: str) -> dict[str, Any]:
    trace = await run_in_threadpool(store_of(engine).get_trace, trace_id)
    if trace is None:
        raise NotFound(f"No trace with id '{trace_id}' (it may be outside the retention window, "
                       "or not written yet).", param="trace_id", code="trace_not_found")
    return trace


async def dashboard(engine: Any, params: Mapping[str, str]) -> dict[str, Any]:
    start, end, bucket = parse_dashboard(params)
    store = store_of(engine)
    query = getattr(store, "dashboard", None)
    try:
        if query is None:
            raise NotImplementedError
        rows = await run_in_threadpool(query, start, end, bucket)
    except NotImplementedError:
        raise GatewayError(f"The {type(store).__name__} store does not support dashboards.",
                           status=501, code="not_supported") from None
    models = sorted({r["model"] or "" for r in rows})
    return {"start": start, "end": end, "bucket_s": bucket, "models": models, "data": rows}


def routes(engine: Any) -> list[Route]:
    """The /api read routes (a server feature: see features.py)."""

    async def traces(request: Request) -> Response:
        try:
            data, cursor = await list_traces(engine, parse_trace_filter(request.query_params))
        except GatewayError as exc:
            return error_response(exc)
        return json_response({"object": "list", "data": data, "next_cursor": cursor})

    async def trace(request: Request) -> Response:
        try:
            return json_response(await get_trace(engine, request.path_params["trace_id"]))
        except GatewayError as exc:
            return error_response(exc)

    async def dash(request: Request) -> Response:
        try:
            return json_response(await dashboard(engine, request.query_params))
        except GatewayError as exc:
            return error_response(exc)

    return [
        Route("/api/traces", traces, methods=["GET"]),
        Route("/api/traces/{trace_id}", trace, methods=["GET"]),
        Route("/api/dashboard", dash, methods=["GET"]),
    ]
