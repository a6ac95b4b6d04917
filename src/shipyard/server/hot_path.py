"""Raw ASGI plumbing for the request path (/v1/chat/completions, /v1/embeddings).

Those two routes carry the traffic, so they skip Starlette's per-request layers (error and
exception middleware, routing, Request/Response objects): :class:`HotRoutes` matches their
paths first and hands every other request to the Starlette app. The handlers read the body
once from ``receive``, answer with two ``send`` calls, and keep every behaviour of a normal
route: OpenAI error JSON, 413/400 on bad bodies, 499 when the client hangs up, and a logged
500 (never a stack trace) when something unexpected breaks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from ..errors import GatewayError, InvalidRequest, PayloadTooLarge

log = logging.getLogger("shipyard.server")

T = TypeVar("T")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (``name`` in lower case), decoded as latin-1."""
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


async def read_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes (413)."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise PayloadTooLarge(f"Request body is {content_length} bytes; the limit is {limit} bytes.",
                              code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.", code="request_too_large")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON: 400 when it is empty or not JSON."""
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None


async def send_bytes(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None,
                     content_type: tuple[bytes, bytes] | None = JSON_TYPE) -> None:
    raw = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        raw.append(content_type)
    if headers:
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
    await send_bytes(send, status, orjson.dumps(data), headers)


async def send_error(send: Send, exc: GatewayError, headers: dict[str, str] | None = None) -> None:
    await send_json(send, exc.to_dict(), exc.status, {**exc.headers, **(headers or {})})


async def send_client_gone(send: Send) -> None:
    """Answer a request whose client left (nobody reads it; the access log sees 499)."""
    await send_bytes(send, 499, b"", content_type=None)


async def until_disconnect(receive: Receive, coro: Awaitable[T]) -> T | None:
    """Await ``coro``; if the client hangs up first, cancel it (and the upstream call) and
    return None. The request body must already have been read."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
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


class HotRoutes:
    """ASGI entry point: POSTs to the hot paths go straight to their handlers, wrapped by
    ``wrap`` (the access middleware when auth is on); everything else goes to ``app``."""

    def __init__(self, app: Any, routes: dict[str, Handler],
                 wrap: Callable[[Handler], Handler] | None = None) -> None:
        self.app = app
        self.routes = routes
        self._dispatch: Handler = wrap(self._route) if wrap is not None else self._route

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.routes:
            scope["app"] = self.app  # handlers that build a Request see the app's state
            await self._hot(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.routes[scope["path"]](scope, receive, send)

    async def _hot(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The handler (behind the access check, if any); an unexpected error is logged and
        answered with OpenAI's error JSON unless the response has already started."""
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._dispatch(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            if started:
                raise
            await send_error(send, GatewayError("Internal error in the gateway; it has been logged.",
                                                status=500, code="internal_error"))
