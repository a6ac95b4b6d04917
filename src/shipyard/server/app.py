"""The ASGI app: OpenAI routes, health and readiness, on top of the shared engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Awaitable, TypeVar

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..cache.keys import REQUEST_CACHE_CONTROL
from ..engine import Engine
from ..errors import GatewayError, InvalidRequest, PayloadTooLarge
from ..tracing.context import parse_traceparent
from ..types import parse_chat_request, parse_embeddings_request

log = logging.getLogger("shipyard.server")

SSE_DONE = b"data: [DONE]\n\n"
T = TypeVar("T")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    return json_response(exc.to_dict(), exc.status, {**exc.headers, **(headers or {})})


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing bodies over ``limit`` bytes (413) and bad JSON (400)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {limit} bytes.",
                              code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.", code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None


def create_app(engine: Engine) -> Starlette:
    cfg = engine.config.server
    trace_header = cfg.trace_header
    limit = cfg.max_body_bytes

    # ---- access (access/): keys, roles, rate limits, budgets, shared state; None = open as before
    from ..access.runtime import build_access

    access = build_access(engine)
    # ---- end access

    def start_span(request: Request, kind: str, name: str, user: str | None, metadata: dict[str, Any]):
        parent = parse_traceparent(request.headers.get("traceparent"))
        trace_id, parent_id = parent if parent else (None, None)
        return engine.new_span(kind, name, trace_id=trace_id, parent_id=parent_id, user=user, metadata=metadata)

    async def chat_completions(request: Request) -> Response:
        try:
            req = parse_chat_request(await read_json(request, limit))
        except GatewayError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        span = start_span(request, "llm", "chat " + req.model, req.user, req.metadata)
        headers = {trace_header: span.trace_id}
        REQUEST_CACHE_CONTROL.set(request.headers.get("cache-control"))  # cache: no-store, no-cache, max-age
        lease = None  # ---- access: the key's aliases, rate limits, budget reservation (settled when done)
        if access is not None:
            try:
                lease = await access.admit(request, req.model, req.body, span)
            except GatewayError as exc:
                return error_response(exc, headers)
        try:
            if not req.stream:
                call = engine.complete(req, span)
                resp = await until_disconnect(request, call if lease is None else lease.run(call, span))
                if resp is None:
                    return Response(status_code=499)
                if "cache" in span.attributes:  # cache: hit | miss | bypass
                    headers["x-shipyard-cache"] = span.attributes["cache"]
                return json_response(resp, headers=headers)
            call = engine.open_stream(req, span)
            chunks = await until_disconnect(request, call if lease is None else lease.run_stream(call, span))
            if chunks is None:
                return Response(status_code=499)
        except GatewayError as exc:
            return error_response(exc, headers)
        if span.attributes.get("fallback_response"):
            headers["x-shipyard-fallback"] = "true"
        if "cache" in span.attributes:  # cache: hit | miss | bypass
            headers["x-shipyard-cache"] = span.attributes["cache"]
        return StreamingResponse(sse(chunks), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})

    async def embeddings(request: Request) -> Response:
        try:
            model, _inputs, body = parse_embeddings_request(await read_json(request, limit))
        except GatewayError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        user = body.get("user") if isinstance(body.get("user"), str) else None
        span = start_span(request, "embedding", "embeddings " + model, user, {})
        headers = {trace_header: span.trace_id}
        lease = None  # ---- access: the key's aliases, rate limits, budget reservation
        if access is not None:
            try:
                lease = await access.admit(request, model, body, span, embeddings=True)
            except GatewayError as exc:
                return error_response(exc, headers)
        try:
            call = engine.embed(model, body, span)
            resp = await until_disconnect(request, call if lease is None else lease.run(call, span))
            if resp is None:
                return Response(status_code=499)
            return json_response(resp, headers=headers)
        except GatewayError as exc:
            return error_response(exc, headers)

    async def models(request: Request) -> Response:
        data = [
            {"id": alias, "object": "model", "created": 0, "owned_by": "shipyard",
             "description": r.cfg.description}
            for alias, r in sorted(engine.routers.items())
        ]
        return json_response({"object": "list", "data": data})

    async def model_detail(request: Request) -> Response:
        alias = request.path_params["model"]
        try:
            r = engine.router_for(alias)
        except GatewayError as exc:
            return error_response(exc)
        return json_response({"id": alias, "object": "model", "created": 0, "owned_by": "shipyard",
                              "description": r.cfg.description})

    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(request: Request) -> Response:
        state = await run_in_threadpool(engine.ready)  # a store ping may block: not on the loop
        state["recorder"] = engine.recorder.stats()
        if access is not None:  # ---- access: Redis / key store per their fail_open|fail_closed policy
            deps = state["access"] = access.ready()
            if not state["store"] and engine.config.auth is not None and engine.config.auth.on_store_error == "fail_open":
                state["ready"] = engine._started and all(state["providers"].values())
            deps_ready = deps.pop("ready")
            state["ready"] = state["ready"] and deps_ready
        return json_response(state, 200 if state["ready"] else 503)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            err = GatewayError(f"Method {request.method} is not allowed on {request.url.path}.",
                               status=405, type="invalid_request_error", code="method_not_allowed")
        elif exc.status_code == 404:
            err = GatewayError(f"Unknown path {request.url.path}.", status=404,
                               type="invalid_request_error", code="unknown_url")
        else:
            err = GatewayError(str(exc.detail), status=exc.status_code, type="invalid_request_error")
        return error_response(err)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(GatewayError("Internal error in the gateway; it has been logged.",
                                           status=500, code="internal_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        if access is not None:  # ---- access: Redis link, breaker sync, key-store health
            await access.start()
        try:
            yield
        finally:
            if access is not None:  # settle pending budget reservations before the engine closes
                await access.close()
            await engine.close()
            if access is not None:  # the shared Redis clients (limits, cache) go last
                await access.close_clients()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model_detail, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
    ]
    from .features import feature_routes

    routes += feature_routes(engine)
    # ---- access: /api/keys admin routes; the auth middleware on every route but the probes
    from .admin_keys import routes as key_routes

    routes += key_routes(engine, access)
    middleware = []
    if access is not None:
        access.register_metrics(engine)
        if access.auth_on:
            from starlette.middleware import Middleware

            from ..access.middleware import AccessMiddleware

            middleware.append(Middleware(AccessMiddleware, access=access))
    # ---- end access
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,  # access
        exception_handlers={HTTPException: not_found, Exception: internal_error},
    )
    app.state.engine = engine
    app.state.access = access  # access: read by access.require_role()
    return app


async def until_disconnect(request: Request, coro: Awaitable[T]) -> T | None:
    """Await ``coro``; if the client hangs up first, cancel it (and the upstream call) and
    return None. The request body must already have been read."""
    task = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await coro
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            return None
        raise
    finally:
        watcher.cancel()


async def sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events for a chat stream; a mid-stream failure ends with an error event."""
    try:
        async for chunk in chunks:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    except GatewayError as exc:
        yield b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n"
        return
    yield SSE_DONE
