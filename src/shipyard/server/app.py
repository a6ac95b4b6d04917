"""The ASGI app: OpenAI routes, health and readiness, on top of the shared engine."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..cache.keys import REQUEST_CACHE_CONTROL
from ..engine import Engine
from ..errors import GatewayError
from ..tracing.context import parse_traceparent
from ..types import parse_chat_request, parse_embeddings_request
from .hot_path import (
    ClientGone,
    Handler,
    HotRoutes,
    header,
    parse_json_body,
    read_body,
    send_client_gone,
    send_error,
    send_json,
    until_disconnect,
)

log = logging.getLogger("shipyard.server")

SSE_DONE = b"data: [DONE]\n\n"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    return json_response(exc.to_dict(), exc.status, {**exc.headers, **(headers or {})})


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing bodies over ``limit`` bytes (413) and bad JSON (400)."""
    try:
        raw = await read_body(request.receive, request.headers.get("content-length"), limit)
    except ClientGone:
        raise ClientDisconnect() from None
    return parse_json_body(raw)


def create_app(engine: Engine) -> HotRoutes:
    cfg = engine.config.server
    trace_header = cfg.trace_header
    limit = cfg.max_body_bytes

    # ---- access (access/): keys, roles, rate limits, budgets, shared state; None = open as before
    from ..access.runtime import build_access

    access = build_access(engine)
    # ---- end access

    def start_span(scope: Any, kind: str, name: str, user: str | None, metadata: dict[str, Any]):
        parent = parse_traceparent(header(scope, b"traceparent"))
        trace_id, parent_id = parent if parent else (None, None)
        return engine.new_span(kind, name, trace_id=trace_id, parent_id=parent_id, user=user, metadata=metadata)

    async def body_of(scope: Any, receive: Any, send: Any) -> Any:
        """The parsed JSON body; None once an error (or nothing: client gone) was answered."""
        try:
            return parse_json_body(await read_body(receive, header(scope, b"content-length"), limit))
        except GatewayError as exc:
            await send_error(send, exc)
        except ClientGone:
            await send_client_gone(send)
        return None

    # The OpenAI routes are raw ASGI handlers (hot_path.py): no Starlette layers per request.
    async def chat_completions(scope: Any, receive: Any, send: Any) -> None:
        data = await body_of(scope, receive, send)
        if data is None:
            return
        try:
            req = parse_chat_request(data)
        except GatewayError as exc:
            return await send_error(send, exc)
        span = start_span(scope, "llm", "chat " + req.model, req.user, req.metadata)
        headers = {trace_header: span.trace_id}
        REQUEST_CACHE_CONTROL.set(header(scope, b"cache-control"))  # cache: no-store, no-cache, max-age
        lease = None  # ---- access: the key's aliases, rate limits, budget reservation (settled when done)
        if access is not None:
            try:
                lease = await access.admit(Request(scope, receive), req.model, req.body, span)
            except GatewayError as exc:
                return await send_error(send, exc, headers)
        try:
            if not req.stream:
                call = engine.complete(req, span)
                resp = await until_disconnect(receive, call if lease is None else lease.run(call, span))
                if resp is None:
                    return await send_client_gone(send)
                if "cache" in span.attributes:  # cache: hit | miss | bypass
                    headers["x-shipyard-cache"] = span.attributes["cache"]
                return await send_json(send, resp, headers=headers)
            call = engine.open_stream(req, span)
            chunks = await until_disconnect(receive, call if lease is None else lease.run_stream(call, span))
            if chunks is None:
                return await send_client_gone(send)
        except GatewayError as exc:
            return await send_error(send, exc, headers)
        if span.attributes.get("fallback_response"):
            headers["x-shipyard-fallback"] = "true"
        if "cache" in span.attributes:  # cache: hit | miss | bypass
            headers["x-shipyard-cache"] = span.attributes["cache"]
        stream = StreamingResponse(sse(chunks), media_type="text/event-stream",
                                   headers={**headers, "cache-control": "no-cache"})
        await stream(scope, receive, send)  # relays chunks; a client that leaves cancels the upstream

    async def embeddings(scope: Any, receive: Any, send: Any) -> None:
        data = await body_of(scope, receive, send)
        if data is None:
            return
        try:
            model, _inputs, body = parse_embeddings_request(data)
        except GatewayError as exc:
            return await send_error(send, exc)
        user = body.get("user") if isinstance(body.get("user"), str) else None
        span = start_span(scope, "embedding", "embeddings " + model, user, {})
        headers = {trace_header: span.trace_id}
        lease = None  # ---- access: the key's aliases, rate limits, budget reservation
        if access is not None:
            try:
                lease = await access.admit(Request(scope, receive), model, body, span, embeddings=True)
            except GatewayError as exc:
                return await send_error(send, exc, headers)
        try:
            call = engine.embed(model, body, span)
            resp = await until_disconnect(receive, call if lease is None else lease.run(call, span))
            if resp is None:
                return await send_client_gone(send)
            return await send_json(send, resp, headers=headers)
        except GatewayError as exc:
            return await send_error(send, exc, headers)

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

    hot: dict[str, Handler] = {"/v1/chat/completions": chat_completions, "/chat/completions": chat_completions,
                               "/v1/embeddings": embeddings, "/embeddings": embeddings}
    # Starlette keeps these paths too: other methods get a 405, and the app works without HotRoutes
    routes = [Route(path, _AsgiEndpoint(handler), methods=["POST"]) for path, handler in hot.items()]
    routes += [
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
    wrap = None
    if access is not None:
        access.register_metrics(engine)
        if access.auth_on:
            from starlette.middleware import Middleware

            from ..access.middleware import AccessMiddleware

            middleware.append(Middleware(AccessMiddleware, access=access))

            def wrap(handler: Handler) -> Handler:
                return AccessMiddleware(handler, access=access)
    # ---- end access
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,  # access
        exception_handlers={HTTPException: not_found, Exception: internal_error},
    )
    app.state.engine = engine
    app.state.access = access  # access: read by access.require_role()
    return HotRoutes(app, hot, wrap)


class _AsgiEndpoint:
    """A raw ASGI handler as a Starlette endpoint (an instance, so Starlette passes it the
    ASGI triple instead of a Request)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.handler(scope, receive, send)


async def sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events for a chat stream; a mid-stream failure ends with an error event."""
    try:
        async for chunk in chunks:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    except GatewayError as exc:
        yield b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n"
        return
    yield SSE_DONE
