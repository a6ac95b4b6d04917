"""Shared HTTP plumbing for providers that speak HTTP: a pooled client, error mapping and SSE reading."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import orjson

from ..errors import ConfigError, UpstreamError, parse_retry_after
from .base import CallTimeouts, Provider
from .http_client import ConnectionFailed, LeanHttpClient, Response


def connection_error(name: str, exc: BaseException) -> UpstreamError:
    """A connection-level failure (refused, reset, dropped mid-body): retryable."""
    reason = type(exc).__name__
    text = str(exc).strip()
    if text:
        reason = f"{reason}: {text[:200]}"
    return UpstreamError(f"{name}: connection error ({reason})", retryable=True, kind="connection")


class HttpClient:
    """One lean keep-alive client (http_client.py) per provider, created on the running loop."""

    def __init__(self, headers: dict[str, str], max_connections: int, provider: str = "",
                 urls: tuple[str, ...] = ()) -> None:
        """``urls``: the URLs this provider will call, checked now with the headers (a bad
        base_url or header is a config error at start-up, not a failing call later)."""
        self.headers = headers
        self.max_connections = max_connections
        self._client: LeanHttpClient | None = None
        probe = LeanHttpClient(headers, max_connections)
        for url in urls:
            try:
                probe.check(url)
            except ConnectionFailed as exc:
                raise ConfigError(f"providers.{provider}: {exc}") from None

    async def start(self) -> None:
        if self._client is None or not self._client.open:
            self._client = LeanHttpClient(self.headers, self.max_connections)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _client_or_fail(self) -> LeanHttpClient:
        if self._client is None or not self._client.open:
            raise UpstreamError("provider is not started", retryable=False, kind="not_started")
        return self._client

    async def post(self, url: str, body: dict[str, Any], t: CallTimeouts, *, stream: bool = False) -> Response:
        """POST ``body`` as JSON; the whole response, or (``stream``) its head to read on."""
        return await self._client_or_fail().post(url, orjson.dumps(body), t.total, t.connect, stream=stream)


async def read_sse(
    resp: Response, name: str, t: CallTimeouts
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
    assert content is not None, "read_sse needs a response opened with stream=True"
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
    except TimeoutError:
        raise timeout_error(name, t) from None
    except ConnectionFailed as exc:
        raise connection_error(name, exc) from None
    except ValueError:  # asyncio's readline: a line over the limit
        raise malformed(name, "an unreadable stream line (over 1 MiB, or not UTF-8)") from None


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
            resp = await self._http.post(url, body, t)
            raw = await resp.read()
        except TimeoutError:
            raise timeout_error(self.name, t) from None
        except ConnectionFailed as exc:
            raise connection_error(self.name, exc) from None
        if resp.status >= 400:
            raise self.http_error(resp.status, raw, resp.headers)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise malformed(self.name, "malformed JSON in the response") from None
        if not isinstance(data, dict):
            raise malformed(self.name, "response is not a JSON object")
        return data

    async def open_stream(self, url: str, body: dict[str, Any], t: CallTimeouts) -> Response:
        """POST a streaming request; return the response once a 2xx status arrived."""
        try:
            resp = await self._http.post(url, body, t, stream=True)
        except TimeoutError:
            raise timeout_error(self.name, t) from None
        except ConnectionFailed as exc:
            raise connection_error(self.name, exc) from None
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except (ConnectionFailed, TimeoutError):
                raw = b""
            finally:
                resp.close()
            raise self.http_error(resp.status, raw, resp.headers)
        return resp
