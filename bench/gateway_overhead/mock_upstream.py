"""A deliberately fast mock of OpenAI's ``POST /v1/chat/completions`` for benchmarks.

A raw asyncio ``Protocol`` speaking just enough HTTP/1.1 (keep-alive, pipelining,
``Content-Length`` and ``Transfer-Encoding: chunked`` request bodies) on uvloop when it is
installed. Every chat completion gets the same small, precomputed, non-streaming JSON
response with ``usage``; a request whose body asks for ``"stream": true`` gets a small
precomputed SSE stream instead. No JSON is parsed on the hot path.

Routes: ``POST /v1/chat/completions`` (also ``/chat/completions``), ``GET /v1/models``,
``GET /health``, and ``GET /__stats`` (request and connection counters, for the harness);
anything else is a 404.

Run it in its own process::

    python bench/gateway_overhead/mock_upstream.py --port 9100 [--host 127.0.0.1] [--delay-ms 0]

It prints ``READY <port>`` on stdout once it listens (``--port 0`` picks a free port).
Loopback only: it refuses a non-loopback ``--host``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import socket
import sys
import time

MODEL = "gpt-4o-mini-2024-07-18"
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024

_COMPLETION = {
    "id": "chatcmpl-bench0000000000000000000000",
    "object": "chat.completion",
    "created": int(time.time()),
    "model": MODEL,
    "system_fingerprint": "fp_bench",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! This is a fixed benchmark reply.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 9,
        "total_tokens": 28,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}


def _stream_body() -> bytes:
    base = {
        "id": _COMPLETION["id"],
        "object": "chat.completion.chunk",
        "created": _COMPLETION["created"],
        "model": MODEL,
        "system_fingerprint": "fp_bench",
    }
    chunks = [
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                }
            ],
        },
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "Hello! This is a "},
                    "finish_reason": None,
                }
            ],
        },
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "fixed benchmark reply."},
                    "finish_reason": None,
                }
            ],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {
                k: v for k, v in _COMPLETION["usage"].items() if k.endswith("tokens")
            },
        },
    ]
    out = b"".join(
        b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n"
        for c in chunks
    )
    return out + b"data: [DONE]\n\n"


def _response(status: str, ctype: str, body: bytes, close: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n"
        "Server: shipyard-bench-mock\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


_CHAT_BODY = json.dumps(_COMPLETION, separators=(",", ":")).encode()
_STREAM_BODY = _stream_body()
_MODELS_BODY = json.dumps(
    {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}],
    },
    separators=(",", ":"),
).encode()
_ERR_404 = json.dumps(
    {"error": {"message": "not found", "type": "invalid_request_error"}}
).encode()
_ERR_400 = json.dumps(
    {"error": {"message": "bad request", "type": "invalid_request_error"}}
).encode()

# Precomputed responses, indexed by (route, close).
RESPONSES: dict[tuple[str, bool], bytes] = {}
for _close in (False, True):
    RESPONSES[("chat", _close)] = _response(
        "200 OK", "application/json", _CHAT_BODY, _close
    )
    RESPONSES[("stream", _close)] = _response(
        "200 OK", "text/event-stream", _STREAM_BODY, _close
    )
    RESPONSES[("models", _close)] = _response(
        "200 OK", "application/json", _MODELS_BODY, _close
    )
    RESPONSES[("health", _close)] = _response(
        "200 OK", "application/json", b'{"status":"ok"}', _close
    )
    RESPONSES[("404", _close)] = _response(
        "404 Not Found", "application/json", _ERR_404, _close
    )
RESPONSE_400 = _response("400 Bad Request", "application/json", _ERR_400, True)

CHAT_PATHS = {b"/v1/chat/completions", b"/chat/completions"}
STATS = {"requests": 0, "chat_completions": 0, "connections": 0}


class _BadRequest(Exception):
    pass


def _parse_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``start``; (body, end offset) or None if incomplete."""
    pos = start
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > 1024:
                raise _BadRequest("chunk size line too long")
            return None
        size_field = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            raise _BadRequest("bad chunk size") from None
        if size < 0 or len(body) + size > MAX_BODY_BYTES:
            raise _BadRequest("chunk too large")
        pos = eol + 2
        if size == 0:
            # Trailer section: header lines until an empty line.
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(body), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos : pos + size]
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise _BadRequest("chunk not followed by CRLF")
        pos += size + 2


class MockProtocol(asyncio.Protocol):
    __slots__ = ("buf", "closing", "delay", "loop", "transport")

    def __init__(self, delay: float) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        STATS["connections"] += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buf += data
        try:
            self._drain()
        except _BadRequest:
            self._send(RESPONSE_400, close=True)

    def _drain(self) -> None:
        buf = self.buf
        while buf and not self.closing:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise _BadRequest("headers too large")
                return
            head = bytes(buf[:head_end])
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                raise _BadRequest("bad request line")
            method, target, version = parts
            content_length = 0
            chunked = False
            conn_hdr = b""
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise _BadRequest("bad header line")
                lname = name.strip().lower()
                if lname == b"content-length":
                    try:
                        content_length = int(value.strip())
                    except ValueError:
                        raise _BadRequest("bad content-length") from None
                    if content_length < 0 or content_length > MAX_BODY_BYTES:
                        raise _BadRequest("bad content-length")
                elif lname == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif lname == b"connection":
                    conn_hdr = value.strip().lower()
            body_start = head_end + 4
            if chunked:
                parsed = _parse_chunked(buf, body_start)
                if parsed is None:
                    return
                body, end = parsed
            else:
                end = body_start + content_length
                if len(buf) < end:
                    return
                body = bytes(buf[body_start:end])
            del buf[:end]

            if version == b"HTTP/1.0":
                close = b"keep-alive" not in conn_hdr
            else:
                close = b"close" in conn_hdr
            path = target.split(b"?", 1)[0]
            if method == b"POST" and path in CHAT_PATHS:
                stream = b'"stream":true' in body or b'"stream": true' in body
                key = "stream" if stream else "chat"
            elif method == b"GET" and path in (b"/v1/models", b"/models"):
                key = "models"
            elif method == b"GET" and path == b"/health":
                key = "health"
            elif method == b"GET" and path == b"/__stats":
                # Counters for the benchmark harness; not counted as a request.
                stats = json.dumps(STATS, separators=(",", ":")).encode()
                self._send(_response("200 OK", "application/json", stats, close), close)
                continue
            else:
                key = "404"
            STATS["requests"] += 1
            if key in ("chat", "stream"):
                STATS["chat_completions"] += 1
            self._send(RESPONSES[(key, close)], close)

    def _send(self, payload: bytes, close: bool) -> None:
        if close:
            self.closing = True
        if self.delay > 0:
            self.loop.call_later(self.delay, self._write, payload, close)
        else:
            self._write(payload, close)

    def _write(self, payload: bytes, close: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(payload)
        if close:
            t.close()


def _check_loopback(host: str) -> None:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise SystemExit(f"cannot resolve {host!r}: {exc}") from None
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise SystemExit(f"refusing to listen on non-loopback address {host!r}")


async def _serve(host: str, port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: MockProtocol(delay), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    async with server:
        await stop.wait()
    print(
        f"STOPPED requests={STATS['requests']} connections={STATS['connections']}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument(
        "--delay-ms", type=float, default=0.0, help="fixed delay before each response"
    )
    ap.add_argument(
        "--no-uvloop", action="store_true", help="use the stock asyncio event loop"
    )
    args = ap.parse_args(argv)
    _check_loopback(args.host)
    if not args.no_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            print("uvloop not installed; using the stock asyncio loop", file=sys.stderr)
    asyncio.run(_serve(args.host, args.port, args.delay_ms / 1000.0))


if __name__ == "__main__":
    main()
