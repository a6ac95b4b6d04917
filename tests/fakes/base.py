"""Shared machinery for loopback fake LLM upstreams.

A :class:`FakeServer` runs an ``aiohttp.web`` application on ``127.0.0.1`` (OS-chosen
port) inside a background thread with its own event loop, so it can be used from
synchronous tests as well as from async tests whose loop runs the gateway under test.

Subclasses provide the routes and the provider-specific error format; this module
provides request recording, the fault queue, fault application and SSE streaming.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Literal

from aiohttp import web

FaultKind = Literal[
    "status",
    "delay",
    "first_chunk_delay",
    "reset",
    "malformed",
    "cut_stream",
    "hang_stream",
    "stream_error",
]
_FAULT_KINDS: frozenset[str] = frozenset(FaultKind.__args__)  # type: ignore[attr-defined]
_STREAM_ENDING_FAULTS: frozenset[str] = frozenset({"cut_stream", "hang_stream", "stream_error"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MALFORMED_BODY = '{"id": "x", broken'


@dataclass
class Fault:
    """One injected failure, consumed by exactly one request.

    kind:
      * ``status``: reply ``status`` with the provider's error JSON (or ``body`` verbatim:
        a ``str`` is sent as-is, a ``dict`` as JSON); ``Retry-After`` if ``retry_after``.
      * ``delay``: sleep ``seconds`` then answer normally.
      * ``first_chunk_delay``: streams send headers, then wait ``seconds`` before the first
        chunk; non-streams behave like ``delay``.
      * ``reset``: abort the TCP connection without any HTTP response.
      * ``malformed``: 200, ``application/json``, body that is not JSON.
      * ``cut_stream``: send ``after_chunks`` content chunks then abort the connection
        (non-stream: like ``reset``).
      * ``hang_stream``: send ``after_chunks`` content chunks then wait until the client
        goes away (non-stream: never answer).
      * ``stream_error``: send ``after_chunks`` content chunks, then an in-band SSE error
        event for ``status`` and end the stream (non-stream: like ``status``).
    """

    kind: FaultKind
    status: int = 500
    body: str | dict[str, Any] | None = None
    retry_after: float | str | None = None
    seconds: float = 2.0
    after_chunks: int = 2

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(_FAULT_KINDS)}")


BODY_KEY: web.RequestKey[Any] = web.RequestKey("fake_json_body")
FAULT_KEY: web.RequestKey[Fault | None] = web.RequestKey("fake_fault")


class Part(Enum):
    """Role of an SSE event, used to decide where stream faults cut in."""

    PREAMBLE = "preamble"  # always sent before any fault applies (e.g. role chunk, message_start)
    CONTENT = "content"  # counted by ``after_chunks``
    TRAILER = "trailer"  # finish/usage/[DONE]; never sent once a stream fault triggers


@dataclass(frozen=True)
class SseEvent:
    part: Part
    data: bytes


def sse(data: dict[str, Any] | str, part: Part = Part.CONTENT, event: str | None = None) -> SseEvent:
    """Encode one Server-Sent Event (``event:`` line only when ``event`` is given)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return SseEvent(part, f"{prefix}data: {payload}\n\n".encode())


# --------------------------------------------------------------------------- text helpers


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def split_pieces(text: str) -> list[str]:
    """Split into ~word pieces (leading whitespace attached) whose concatenation is ``text``."""
    return re.findall(r"\s*\S+|\s+$", text)


def split_fixed(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def cut_at_stop(text: str, stops: str | list[str] | None) -> tuple[str, str | None]:
    """Truncate ``text`` at the earliest stop string; return (text, matched stop or None)."""
    candidates = [stops] if isinstance(stops, str) else list(stops or [])
    hits = [(text.find(s), s) for s in candidates if s and s in text]
    if not hits:
        return text, None
    pos, stop = min(hits, key=lambda hit: hit[0])
    return text[:pos], stop


def truncate_words(text: str, limit: int | None) -> tuple[str, bool]:
    """Keep at most ``limit`` whitespace-separated words; return (text, truncated?)."""
    words = re.findall(r"\s*\S+", text)
    if limit is None or len(words) <= limit:
        return text, False
    return "".join(words[: max(limit, 0)]), True


# --------------------------------------------------------------------------- server


class FakeServer:
    """Base class: thread + loop + aiohttp runner, recording, faults and streaming."""

    default_reply_text: ClassVar[str] = "Hello from fake"
    start_timeout: ClassVar[float] = 10.0

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply_tool_calls: list[dict[str, Any]] | None = None
        self.usage: tuple[int, int] = (11, 7)
        self.chunk_delay: float = 0.0
        self.require_key: str | None = None
        self._reply_text: str | None = None
        self._faults: collections.deque[Fault] = collections.deque()
        self._lock = threading.Lock()
        self._disconnect_cond = threading.Condition(self._lock)
        self._disconnects = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._port: int | None = None

    # ------------------------------------------------------------------ public API

    @property
    def reply_text(self) -> str:
        return self.default_reply_text if self._reply_text is None else self._reply_text

    @reply_text.setter
    def reply_text(self, value: str) -> None:
        self._reply_text = value

    @property
    def reply_text_is_set(self) -> bool:
        """True when a test assigned ``reply_text`` explicitly."""
        return self._reply_text is not None

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def disconnects(self) -> int:
        with self._lock:
            return self._disconnects

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` requests (FIFO after already queued faults)."""
        with self._lock:
            self._faults.extend([fault] * times)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def clear(self) -> None:
        """Forget recorded requests, queued faults and the disconnect count."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self._disconnects = 0

    def wait_for_disconnect(self, timeout: float = 5.0, count: int = 1) -> bool:
        """Block until at least ``count`` stream disconnects were seen (False on timeout)."""
        with self._disconnect_cond:
            return self._disconnect_cond.wait_for(lambda: self._disconnects >= count, timeout)

    def start(self) -> FakeServer:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._stopping = False
        started = threading.Event()
        errors: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(started, errors), name=f"{type(self).__name__}-loop", daemon=True
        )
        self._thread.start()
        if not started.wait(self.start_timeout) or errors:
            self.stop()
            raise RuntimeError(f"{type(self).__name__} failed to start") from (errors[0] if errors else None)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stopping = True
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(self.start_timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(self.start_timeout)
        loop.close()
        self._loop = self._thread = self._runner = None
        self._port = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ subclass hooks

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def error_payload(self, status: int, message: str | None = None) -> dict[str, Any]:
        """Provider error JSON for ``status``."""
        raise NotImplementedError

    def stream_error_event(self, status: int) -> SseEvent:
        """In-band SSE error event for the ``stream_error`` fault."""
        raise NotImplementedError

    def preflight(self, request: web.Request) -> web.Response | None:
        """Auth/header checks run after faults; return a response to short-circuit."""
        return None

    # ------------------------------------------------------------------ helpers for subclasses

    def error_response(
        self, status: int, message: str | None = None, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.json_response(self.error_payload(status, message), status=status, headers=headers)

    async def stream_events(self, request: web.Request, events: Iterable[SseEvent]) -> web.StreamResponse:
        """Write ``events`` as ``text/event-stream``, applying the request's stream fault."""
        fault: Fault | None = request.get(FAULT_KEY)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await response.prepare(request)
            if fault is not None and fault.kind == "first_chunk_delay":
                await asyncio.sleep(fault.seconds)
            await self._write_events(request, response, events, fault)
        except ConnectionError:
            self._note_disconnect()
        except asyncio.CancelledError:
            self._note_disconnect()
            raise
        return response

    # ------------------------------------------------------------------ internals: lifecycle

    def _run(self, started: threading.Event, errors: list[BaseException]) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._startup())
        except BaseException as exc:  # noqa: BLE001 - surfaced to start()
            errors.append(exc)
            started.set()
            return
        started.set()
        self._loop.run_forever()

    async def _startup(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        self.add_routes(app)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ internals: request flow

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._record(request)
            request[FAULT_KEY] = fault = self._pop_fault()
            early = await self._apply_fault(request, fault)
            if early is not None:
                return early
            return self.preflight(request) or await self._dispatch(request, handler)
        finally:
            self._tasks.discard(task)

    async def _dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return self.error_response(404, f"Invalid URL ({request.method} {request.path})")
        except web.HTTPMethodNotAllowed:
            return self.error_response(405, f"Method {request.method} not allowed for {request.path}")

    async def _record(self, request: web.Request) -> None:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request[BODY_KEY] = body
        entry = {
            "method": request.method,
            "path": request.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "json": body,
        }
        with self._lock:
            self.requests.append(entry)

    def _pop_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _note_disconnect(self) -> None:
        if self._stopping:
            return
        with self._disconnect_cond:
            self._disconnects += 1
            self._disconnect_cond.notify_all()

    @staticmethod
    def _is_stream(request: web.Request) -> bool:
        body = request.get(BODY_KEY)
        return isinstance(body, dict) and body.get("stream") is True

    async def _apply_fault(self, request: web.Request, fault: Fault | None) -> web.StreamResponse | None:
        """Apply request-level faults; return a response to short-circuit, else None."""
        if fault is None:
            return None
        kind, streaming = fault.kind, self._is_stream(request)
        if kind == "status" or (kind == "stream_error" and not streaming):
            return self._status_response(fault)
        if kind == "malformed":
            return web.Response(status=200, text=MALFORMED_BODY, content_type="application/json")
        if kind == "delay" or (kind == "first_chunk_delay" and not streaming):
            await asyncio.sleep(fault.seconds)
        elif kind == "reset" or (kind == "cut_stream" and not streaming):
            self._abort(request)
            return web.Response()
        elif kind == "hang_stream" and not streaming:
            await self._wait_until_closed(request)
            return web.Response()
        return None

    def _status_response(self, fault: Fault) -> web.Response:
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        if fault.body is None:
            return self.error_response(fault.status, headers=headers)
        if isinstance(fault.body, dict):
            return web.json_response(fault.body, status=fault.status, headers=headers)
        return web.Response(status=fault.status, text=fault.body, content_type="application/json", headers=headers)

    @staticmethod
    def _abort(request: web.Request) -> None:
        """Drop the TCP connection; aiohttp then quietly fails to write whatever is returned."""
        if request.transport is not None:
            request.transport.abort()

    @staticmethod
    async def _wait_until_closed(request: web.Request) -> None:
        """Sleep until the client goes away (or the handler is cancelled)."""
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.02)

    async def _write_events(
        self,
        request: web.Request,
        response: web.StreamResponse,
        events: Iterable[SseEvent],
        fault: Fault | None,
    ) -> None:
        sent_content = 0
        for event in events:
            if event.part is not Part.PREAMBLE:
                if fault is not None and sent_content >= fault.after_chunks:
                    await self._trigger_stream_fault(request, response, fault)
                    if fault.kind in _STREAM_ENDING_FAULTS:
                        return
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            await response.write(event.data)
            sent_content += event.part is Part.CONTENT
        await response.write_eof()

    async def _trigger_stream_fault(self, request: web.Request, response: web.StreamResponse, fault: Fault) -> None:
        if fault.kind == "cut_stream":
            self._abort(request)
        elif fault.kind == "hang_stream":
            await self._wait_until_closed(request)
            raise ConnectionResetError("client went away during hang_stream")
        elif fault.kind == "stream_error":
            await response.write(self.stream_error_event(fault.status).data)
            await response.write_eof()
