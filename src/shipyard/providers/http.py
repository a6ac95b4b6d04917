"""Shared HTTP plumbing for providers that speak HTTP: a pooled session and SSE reading."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import orjson

from ..errors import UpstreamError, parse_retry_after
from .base import CallTimeouts, Provider


def connection_error(name: str, exc: BaseException) -> UpstreamError:
    """A connection-level failure (refused, reset, dropped mid-body): retryable."""
    reason = type(exc).__name__
    text = str(exc).strip()
    if text:
        reason = f"{reason}: {text[:200]}"
    return UpstreamError(f"{name}: connection error ({reason})", retryable=True, kind="connection")


class HttpClient:
    """One aiohttp session per provider, created on the running loop, reused for every call."""

    def __init__(self, headers: dict[str, str], max_connections: int) -> None:
        self.headers = headers
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, ttl_dns_cache=300, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self.headers, auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),  # an API gateway never replays cookies
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, t: CallTimeouts) -> aiohttp.ClientTimeout:
        key = (t.total, t.connect)
        cached = self._timeouts.get(key)
        if cached is None:
            cached = self._timeouts[key] = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect)
        return cached

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise UpstreamError("provider is not started", retryable=False, kind="not_started")
        return self._session

    def post(self, url: str, body: dict[str, Any], t: CallTimeouts, headers: dict[str, str] | None = None):
        """A context manager for one POST whose body is read in full."""
        return self._session_or_fail().post(
            url, data=orjson.dumps(body), timeout=self._timeout(t), headers=headers
        )

    async def open(
        self, url: str, body: dict[str, Any], t: CallTimeouts, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """Start a POST and return once headers arrive; the caller reads and closes it."""
        return await self._session_or_fail().post(
            url, data=orjson.dumps(body), timeout=self._timeout(t), headers=headers
        )


async def read_sse(
    resp: aiohttp.ClientResponse, name: str, t: CallTimeouts
) -> AsyncIterator[tuple[str | None, bytes]]:
    """Yield (event, data) for each server-sent event; the first within ``t.ttft`` seconds.

    Network failures and timeouts surface as UpstreamError; the caller decides whether a
    stream that simply ends is complete.
    """
    ctype = resp.headers.get("content-type", "")
    if "text/event-stream" not in ctype:
        raise malformed(name, f"expected an event stream, got content-type {ctype or 'none'}")
    event: str | None = None
    data: list[bytes] = []
    first = True
    content = resp.content
    try:
        while True:
            if first and t.ttft is not None:
                try:
                    async with asyncio.timeout(t.ttft):
                        line = await content.readline()
                except TimeoutError:
                    raise UpstreamError(
                        f"{name}: no first token within {t.ttft:g}s", retryable=True, kind="ttft_timeout"
                    ) from None
            else:
                line = await content.readline()
            if not line:
                if data:
                    yield event, b"\n".join(data)
                return
            line = line.rstrip(b"\r\n")
            if not line:
                if data:
                    first = False
                    yield event, b"\n".join(data)
                event, data = None, []
                continue
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode()
            # comments (":...") and other fields (id, retry) are ignored
    except asyncio.TimeoutError:
        raise timeout_error(name, t) from None
    except aiohttp.ClientError as exc:
        raise connection_error(name, exc) from None


def timeout_error(name: str, t: CallTimeouts) -> UpstreamError:
    return UpstreamError(f"{name}: timed out after {t.total:g}s", retryable=True, kind="timeout")


def malformed(name: str, what: str) -> UpstreamError:
    return UpstreamError(f"{name}: {what}", retryable=True, kind="malformed")


def loads_event(name: str, data: bytes) -> Any:
    """One stream event's JSON payload; malformed JSON is a retryable upstream error."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise malformed(name, "malformed JSON in a stream event") from None


class HttpProvider(Provider):
    """A provider that talks HTTP+JSON: pooled session, error mapping, stream opening.

    Subclasses set ``self._http`` in ``__init__`` and may override ``error_message``.
    """

    _http: HttpClient

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    def error_message(self, raw: bytes) -> str:
        """The human part of an error body (override per wire format)."""
        return raw[:200].decode("utf-8", "replace").strip() or "no body"

    def http_error(self, status: int, raw: bytes, headers: Any) -> UpstreamError:
        return UpstreamError.from_status(
            status,
            f"{self.name}: HTTP {status}: {self.error_message(raw)}",
            retry_after=parse_retry_after(headers.get("retry-after")),
        )

    async def post_json(self, url: str, body: dict[str, Any], t: CallTimeouts) -> dict[str, Any]:
        """POST and return the JSON object answered; every failure is an UpstreamError."""
        try:
            async with self._http.post(url, body, t) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self.http_error(resp.status, raw, resp.headers)
        except asyncio.TimeoutError:
            raise timeout_error(self.name, t) from None
        except aiohttp.ClientError as exc:
            raise connection_error(self.name, exc) from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise malformed(self.name, "malformed JSON in the response") from None
        if not isinstance(data, dict):
            raise malformed(self.name, "response is not a JSON object")
        return data

    async def open_stream(self, url: str, body: dict[str, Any], t: CallTimeouts) -> aiohttp.ClientResponse:
        """POST a streaming request; return the response once a 2xx status arrived."""
        try:
            resp = await self._http.open(url, body, t)
        except asyncio.TimeoutError:
            raise timeout_error(self.name, t) from None
        except aiohttp.ClientError as exc:
            raise connection_error(self.name, exc) from None
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                raw = b""
            finally:
                resp.close()
            raise self.http_error(resp.status, raw, resp.headers)
        return resp
