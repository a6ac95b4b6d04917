"""A lean HTTP/1.1 client for provider calls: keep-alive pools over asyncio protocols, with
httptools (the C parser uvicorn uses) reading the responses.

Why not aiohttp here: a provider call is one small POST on a kept-alive connection, and
aiohttp's general machinery (sessions, request/response objects, a writer task, timer
contexts) cost ~140 µs of CPU per call on a 2-core machine against ~15 µs for this
(bench/gateway_overhead). The gateway runs on one event loop, so that CPU is throughput.

What it does: POST with a JSON body (``Content-Length``), TLS via ``ssl``, responses framed
by ``Content-Length``, chunked encoding or connection close, gzip/deflate bodies, a
connection limit per client, idle connections reused for ``keepalive_s``, one retry on a
fresh connection when a reused one turns out to be closed before any byte of the answer
(the server dropped it while idle; a server that read the request and then died without a
byte of answer would see it twice — the same risk as any retry of a POST), a total
deadline per request covering the body, flow control on streams (reading pauses while
``STREAM_BUFFER`` bytes wait for the consumer) and a cap on a whole body (``MAX_BODY``).
Cancelling a call closes its connection, so the upstream sees the client go.
Failures raise :class:`ConnectionFailed` or :class:`TimeoutError`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import httptools

from .. import __version__

STREAM_LINE_LIMIT = 1024 * 1024  # one SSE line (a whole chunk); reading pauses at twice this
MAX_BODY = 64 * 1024 * 1024  # a non-streamed answer (after decompression)


class ConnectionFailed(Exception):
    """The connection could not be made, broke, or carried a malformed HTTP response."""


class _Target:
    """A parsed URL: where to connect and the fixed part of the request head."""

    __slots__ = ("origin", "host", "port", "tls", "head")

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConnectionFailed(f"unsupported URL {url!r} (expected http:// or https://)")
        self.tls = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.tls else 80)
        self.origin = (self.tls, self.host, self.port)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        default_port = self.port == (443 if self.tls else 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host:  # IPv6 literal
            host_header = f"[{self.host}]" if default_port else f"[{self.host}]:{self.port}"
        fixed = {"accept-encoding": "gzip, deflate", "user-agent": f"shipyard/{__version__}"}
        fixed.update({k.lower(): v for k, v in headers.items()
                      if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")})
        lines = [f"POST {path} HTTP/1.1", f"host: {host_header}"] + [f"{k}: {v}" for k, v in fixed.items()]
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ConnectionFailed("a request header contains a line break")
        try:
            self.head = ("\r\n".join(lines) + "\r\ncontent-length: ").encode("latin-1")
        except UnicodeEncodeError:
            raise ConnectionFailed("a request header holds characters outside latin-1") from None


class Response:
    """One response. ``status`` and ``headers`` (lower-case names) once it is returned;
    the body via :meth:`read`, or line by line from ``content`` for a stream."""

    __slots__ = ("status", "headers", "content", "_conn", "_chunks", "_done", "_ready", "_decoder",
                 "_framed", "_got_bytes", "_timer", "complete", "_slot", "_raw_deflate", "_size")

    def __init__(self, conn: _Connection, streaming: bool, loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.content: _Body | None = _Body(conn, loop) if streaming else None
        self._conn: _Connection | None = conn
        self._chunks: list[bytes] = []
        self._done: asyncio.Future[None] = loop.create_future()  # the whole body arrived
        self._ready: asyncio.Future[None] | None = loop.create_future() if streaming else None  # headers
        self._decoder: Any = None
        self._framed = True
        self._got_bytes = False
        self._timer: asyncio.TimerHandle | None = None
        self.complete = False
        self._slot: asyncio.Semaphore | None = None  # the pool slot, once post() hands it over
        self._raw_deflate = False
        self._size = 0

    async def read(self) -> bytes:
        if self.content is not None:
            return await self.content.read()
        await self._done
        return self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)

    def close(self) -> None:
        """Done with it: an unfinished response's connection is closed (the upstream sees it)."""
        if not self.complete and self._conn is not None:
            self._conn.abort()
        self._release()

    # ---- fed by the connection -------------------------------------------------------
    def _headers(self, raw: list[tuple[bytes, bytes]], status: int) -> None:
        self.status = status
        h = self.headers
        for k, v in raw:
            name, value = k.decode("latin-1").lower(), v.decode("latin-1")
            h[name] = f"{h[name]}, {value}" if name in h else value
        enc = h.get("content-encoding", "").strip().lower()
        if enc in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
            self._raw_deflate = enc == "deflate"  # some servers send deflate without the zlib header
        self._framed = "content-length" in h or "chunked" in h.get("transfer-encoding", "").lower()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _body(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                try:
                    data = self._decoder.decompress(data)
                except zlib.error:
                    if not self._raw_deflate:
                        raise
                    self._decoder = zlib.decompressobj(wbits=-15)  # headerless deflate: from the start
                    data = self._decoder.decompress(data)
                self._raw_deflate = False
            except zlib.error as exc:
                self._fail(ConnectionFailed(f"cannot decompress the response body ({exc})"))
                return
        if self.content is not None:
            self.content.feed_data(data)
        else:
            self._size += len(data)
            if self._size > MAX_BODY:
                self._fail(ConnectionFailed(f"the response body exceeds {MAX_BODY // (1024 * 1024)} MiB"))
                return
            self._chunks.append(data)

    def _finish(self) -> None:
        if self.complete:
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._body(tail)
        self.complete = True
        if self.content is not None:
            self.content.feed_eof()
            self.content.detach()
        if not self._done.done():
            self._done.set_result(None)
        if self._timer is not None:
            self._timer.cancel()

    def _fail(self, exc: BaseException) -> None:
        if self.complete:
            return
        self.complete = True  # nothing more will come
        for fut in (self._ready, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: a failure nobody awaits is not logged
        if self.content is not None:
            self.content.set_exception(exc)
            self.content.detach()
        if self._timer is not None:
            self._timer.cancel()
        if self._conn is not None:
            self._conn.abort()
        self._release()

    def _expire(self) -> None:
        self._timer = None
        self._fail(TimeoutError())

    def _release(self) -> None:
        self._conn = None
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()


class _Body(asyncio.StreamReader):
    """A stream's body: ``readline()`` for the consumer, with flow control on the connection
    (asyncio's reader pauses the transport above twice its limit and resumes it as the
    consumer catches up); detached when the body ends, so the connection goes back to the
    pool reading."""

    def __init__(self, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=STREAM_LINE_LIMIT, loop=loop)
        if conn.transport is not None:
            self.set_transport(conn.transport)

    def detach(self) -> None:
        transport = self._transport  # type: ignore[attr-defined]
        if transport is not None and self._paused and not transport.is_closing():  # type: ignore[attr-defined]
            transport.resume_reading()
        self._paused = False
        self._transport = None


class _Connection(asyncio.Protocol):
    """One kept-alive connection; carries one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: Response | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.interim = False  # parsing a 1xx informational response

    def send(self, data: bytes, resp: Response) -> None:
        self.resp = resp
        self.raw_headers = []
        assert self.transport is not None
        self.transport.write(data)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # ---- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        resp._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.resp is not None:
                self.resp._fail(ConnectionFailed(f"malformed HTTP response ({exc})"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp, self.resp = self.resp, None
        if resp is None or resp.complete:
            return
        if resp.status and not resp._framed:  # the body ran to the end of the connection
            resp._finish()
            resp._release()
            return
        why = f": {type(exc).__name__}: {exc}" if exc else ""
        resp._fail(ConnectionFailed(f"the server closed the connection{why}"))

    # ---- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.resp is None or self.resp.complete:  # a response nobody asked for: unusable
            self.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # informational (103 Early Hints...): the answer follows
            self.interim = True
            self.raw_headers = []
            return
        if self.resp is not None:
            self.resp._headers(self.raw_headers, status)

    def on_body(self, body: bytes) -> None:
        if self.resp is not None:
            self.resp._body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        resp, self.resp = self.resp, None
        if resp is None:
            return
        keep = self.parser.should_keep_alive() and not self.closed
        resp._finish()
        if keep:
            self.pool.put_idle(self)
        else:
            self.abort()
        resp._release()


class _Pool:
    """Connections to one origin: at most ``limit`` in use, idle ones reused LIFO."""

    def __init__(self, target: _Target, limit: int, keepalive_s: float, ssl_ctx: ssl.SSLContext | None) -> None:
        self.target = target
        self.slots = asyncio.Semaphore(limit)
        self.idle: deque[_Connection] = deque()
        self.keepalive_s = keepalive_s
        self.ssl_ctx = ssl_ctx
        self.closed = False

    def put_idle(self, conn: _Connection) -> None:
        if self.closed:  # the client closed while this call ran
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        conn.reused = True
        self.idle.append(conn)

    def take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.abort()
        return None

    async def connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        t = self.target
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), t.host, t.port, ssl=self.ssl_ctx,
                    server_hostname=t.host if self.ssl_ctx is not None else None)
        except TimeoutError:
            raise TimeoutError(f"connecting to {t.host}:{t.port} timed out after {timeout:g}s") from None
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {t.host}:{t.port}: {exc.strerror or exc}") from None
        return conn

    def close(self) -> None:
        self.closed = True
        while self.idle:
            self.idle.pop().abort()


class LeanHttpClient:
    """POST JSON bodies to a provider's URLs over pooled keep-alive connections."""

    def __init__(self, headers: dict[str, str], max_connections: int, keepalive_s: float = 30.0) -> None:
        self.headers = headers
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self._targets: dict[str, _Target] = {}
        self._pools: dict[tuple[bool, str, int], _Pool] = {}
        self._ssl: ssl.SSLContext | None = None
        self.open = True

    def check(self, url: str) -> None:
        """Raise ConnectionFailed now if ``url`` or the headers cannot make a request."""
        self._targets[url] = _Target(url, self.headers)

    def _pool(self, url: str) -> tuple[_Target, _Pool]:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _Target(url, self.headers)
        pool = self._pools.get(target.origin)
        if pool is None:
            ctx = None
            if target.tls:
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()
                ctx = self._ssl
            pool = self._pools[target.origin] = _Pool(target, self.max_connections, self.keepalive_s, ctx)
        return target, pool

    async def post(self, url: str, body: bytes, total: float, connect: float, *,
                   stream: bool = False) -> Response:
        """Send the request; return when the whole response (``stream``: its head) arrived.
        The total deadline keeps running while a stream's body is read."""
        if not self.open:
            raise ConnectionFailed("the client is closed")
        target, pool = self._pool(url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        data = target.head + str(len(body)).encode() + b"\r\n\r\n" + body
        try:
            async with asyncio.timeout_at(deadline):
                await pool.slots.acquire()
        except TimeoutError:
            raise TimeoutError(f"no free connection within {total:g}s") from None
        # The slot is this call's until it returns; a stream still being read takes it over.
        resp: Response | None = None
        try:
            for attempt in range(2):
                conn = pool.take_idle() if attempt == 0 else None  # the retry: always a fresh one
                if conn is None:
                    conn = await pool.connect(min(connect, max(0.0, deadline - loop.time())))
                resp = Response(conn, stream, loop)
                resp._timer = loop.call_at(deadline, resp._expire)
                conn.send(data, resp)
                try:
                    if stream:
                        assert resp._ready is not None
                        await resp._ready
                    else:
                        await resp._done
                except ConnectionFailed:
                    # a reused connection the server had closed while idle: once more, fresh
                    if conn.reused and not resp._got_bytes and attempt == 0:
                        continue
                    raise
                if stream and not resp.complete:
                    resp._slot = pool.slots  # released when the stream ends, fails or is closed
                else:
                    pool.slots.release()
                return resp
            raise AssertionError("unreachable")
        except BaseException:
            if resp is not None:
                resp.close()
            pool.slots.release()
            raise

    async def close(self) -> None:
        self.open = False
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
