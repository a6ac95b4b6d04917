"""LeanHttpClient (shipyard/providers/http_client.py) against real loopback TCP servers.

Each test scripts a raw asyncio server (``RawServer``) byte by byte, so framing, keep-alive,
the stale-connection retry, deadlines, cancellation and the connection limit are checked on
the wire: the server counts connections, records every request it parsed and notices when
the client closes a connection.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Self

import pytest

from shipyard.providers.http_client import ConnectionFailed, LeanHttpClient

pytestmark = pytest.mark.timeout(15)

WAIT = 2.0  # generous bound for "this should happen promptly" waits


# --------------------------------------------------------------------------- loopback server


@dataclass
class Request:
    peer: int  # index of the connection it arrived on
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # as sent (name case preserved), in order
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"header {name!r} sent {len(values)} times"
        return values[0] if values else None


@dataclass
class Peer:
    """The server's side of one accepted connection."""

    server: RawServer
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[Request] = field(default_factory=list)
    eof: asyncio.Event = field(default_factory=asyncio.Event)  # the client closed its side
    got_request: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_request(self) -> Request | None:
        """The next request on this connection, or None at EOF / reset."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof.set()
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        req = Request(self.index, method, target, version, headers, b"")
        n = int(req.header("content-length") or 0)
        try:
            req.body = await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof.set()
            return None
        self.requests.append(req)
        self.server.requests.append(req)
        self.got_request.set()
        self.server.got_request.set()
        return req

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def trickle(self, parts: list[bytes], pause: float = 0.02) -> None:
        """Send ``parts`` as separate TCP writes with a pause between them."""
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(pause)
            await self.send(part)

    async def until_eof(self) -> None:
        """Hold the connection without answering until the client closes it."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.eof.set()

    def close(self) -> None:
        self.writer.close()


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """An asyncio TCP server on 127.0.0.1 whose ``handler(peer)`` scripts each connection.

    ``active`` / ``max_active`` count connections open at once (accepted and neither closed by
    the handler nor by the client); ``in_flight`` / ``max_in_flight`` can be maintained by
    handlers that want to count requests being answered.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.requests: list[Request] = []
        self.active = 0
        self.max_active = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.got_request = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WAIT)
        await self._server.wait_closed()

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(self, len(self.peers), reader, writer)
        self.peers.append(peer)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            # no await between the handler's last write and this: the client (same loop)
            # cannot have reacted to the answer before the connection stops counting
            self.active -= 1
            writer.close()
            self._tasks.discard(task)

    async def wait_requests(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.requests) < n:
                self.got_request.clear()
                await self.got_request.wait()

    async def wait_peers(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.peers) < n:
                await asyncio.sleep(0.005)


def response(body: bytes = b"ok", *headers: str, status: str = "200 OK") -> bytes:
    """A complete Content-Length response."""
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def head(*headers: str, status: str = "200 OK", version: str = "HTTP/1.1") -> bytes:
    return ("\r\n".join([f"{version} {status}", *headers]) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


async def answer_each(peer: Peer, make: Callable[[Request], bytes] = lambda r: response(r.body)) -> None:
    """Keep-alive echo: answer every request with ``make(request)``."""
    while (req := await peer.read_request()) is not None:
        await peer.send(make(req))


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def post(client: LeanHttpClient, url: str, body: bytes = b"{}", total: float = 2.0,
               connect: float = 1.0, **kw) -> tuple[int, dict[str, str], bytes]:
    resp = await client.post(url, body, total, connect, **kw)
    data = await resp.read()
    resp.close()
    return resp.status, resp.headers, data


@pytest.fixture
async def client():
    c = LeanHttpClient({"authorization": "Bearer sk-test", "content-type": "application/json"}, 8)
    yield c
    await c.close()


# --------------------------------------------------------------------------- 1. keep-alive and the request


async def test_sequential_posts_reuse_one_connection_and_send_the_exact_request(client):
    async with RawServer(answer_each) as srv:
        url = f"{srv.url}/v1/chat/completions?api-version=2024-10-21&x=1"
        bodies = [b'{"n": 1}', b'{"text": "caf\xc3\xa9 \\r\\n"}' + b"\r\n\r\nraw CRLFs inside", b""]
        for body in bodies:
            status, _, data = await post(client, url, body)
            assert (status, data) == (200, body)

        assert len(srv.peers) == 1, "keep-alive: every request on the first connection"
        assert [r.peer for r in srv.requests] == [0, 0, 0]
        for req, body in zip(srv.requests, bodies):
            assert req.method == "POST"
            assert req.target == "/v1/chat/completions?api-version=2024-10-21&x=1"
            assert req.version == "HTTP/1.1"
            assert req.header("host") == f"127.0.0.1:{srv.port}"
            assert req.header("content-length") == str(len(body))
            assert req.header("authorization") == "Bearer sk-test"
            assert req.header("content-type") == "application/json"
            assert "gzip" in (req.header("accept-encoding") or "")
            assert (req.header("user-agent") or "").startswith("shipyard/")
            assert req.header("transfer-encoding") is None
            assert req.body == body


async def test_path_defaults_to_slash_and_each_origin_gets_its_own_connection(client):
    async with RawServer(answer_each) as a, RawServer(answer_each) as b:
        await post(client, a.url, b"1")
        await post(client, b.url + "/x", b"2")
        await post(client, a.url + "/y", b"3")
        assert [r.target for r in a.requests] == ["/", "/y"]
        assert [r.target for r in b.requests] == ["/x"]
        assert len(a.peers) == 1 and len(b.peers) == 1


async def test_bad_urls_and_header_injection_are_refused():
    c = LeanHttpClient({}, 1)
    with pytest.raises(ConnectionFailed, match="unsupported URL"):
        await c.post("ftp://127.0.0.1/x", b"", 1, 1)
    evil = LeanHttpClient({"x-evil": "a\r\nhost: elsewhere"}, 1)
    with pytest.raises(ConnectionFailed, match="line break"):
        await evil.post("http://127.0.0.1:1/x", b"", 1, 1)
    await c.close()
    with pytest.raises(ConnectionFailed, match="closed"):
        await c.post("http://127.0.0.1:1/x", b"", 1, 1)


async def test_idle_connection_past_keepalive_is_closed_and_replaced():
    c = LeanHttpClient({}, 4, keepalive_s=0.1)
    try:
        async with RawServer(answer_each) as srv:
            await post(c, srv.url, b"a")
            await asyncio.sleep(0.2)
            await post(c, srv.url, b"b")
            assert len(srv.peers) == 2
            await asyncio.wait_for(srv.peers[0].eof.wait(), WAIT)  # the stale one was closed
            await post(c, srv.url, b"c")  # the fresh one is kept alive
            assert len(srv.peers) == 2
    finally:
        await c.close()


# --------------------------------------------------------------------------- 2. response framing


async def test_chunked_body_in_several_writes_then_keep_alive(client):
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.trickle([head("Transfer-Encoding: chunked"), chunk(b"hello"), chunk(b", "),
                            chunk(b"chunked ") + chunk(b"world"), LAST_CHUNK])
        await answer_each(peer)

    async with RawServer(handler) as srv:
        status, headers, data = await post(client, srv.url)
        assert (status, data) == (200, b"hello, chunked world")
        assert headers["transfer-encoding"] == "chunked"
        assert (await post(client, srv.url, b"again"))[2] == b"again"
        assert len(srv.peers) == 1, "a chunked response leaves the connection reusable"


async def test_body_without_length_is_read_to_eof_and_connection_not_reused(client):
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        await peer.trickle([head("Connection: close", "Content-Type: text/plain"), b"part one, ", b"part two"])
        # returning closes the connection: that ends the body

    async with RawServer(handler) as srv:
        status, headers, data = await post(client, srv.url)
        assert (status, data) == (200, b"part one, part two")
        assert headers["connection"] == "close"
        status, _, data = await post(client, srv.url)
        assert data == b"part one, part two"
        assert len(srv.peers) == 2


async def test_http10_response_without_length_is_read_to_eof(client):
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.trickle([head(version="HTTP/1.0"), b"old ", b"school"])

    async with RawServer(handler) as srv:
        assert (await post(client, srv.url))[::2] == (200, b"old school")


async def test_no_content_response_completes_and_keeps_the_connection(client):
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(head("X-Empty: yes", status="204 No Content"))
        await answer_each(peer)

    async with RawServer(handler) as srv:
        status, headers, data = await post(client, srv.url, total=1)
        assert (status, headers, data) == (204, {"x-empty": "yes"}, b"")
        assert (await post(client, srv.url, b"next", total=1))[2] == b"next"
        assert len(srv.peers) == 1


async def test_gzip_and_deflate_bodies_are_decompressed(client):
    text = b'{"choices": [' + b",".join(b'{"text": "lorem ipsum %d"}' % i for i in range(300)) + b"]}"
    gz = gzip.compress(text)
    half = len(gz) // 2

    async def handler(peer: Peer) -> None:
        req = await peer.read_request()
        assert req is not None
        # 1: gzip + content-length
        await peer.send(response(gz, "Content-Encoding: gzip"))
        await peer.read_request()
        # 2: gzip + chunked, split at awkward places (inside the gzip header and trailer)
        await peer.trickle([head("Transfer-Encoding: chunked", "Content-Encoding: gzip"),
                            chunk(gz[:3]), chunk(gz[3:half]), chunk(gz[half:-2]), chunk(gz[-2:]), LAST_CHUNK])
        await peer.read_request()
        # 3: deflate (zlib-wrapped, as RFC 9110 defines it)
        await peer.send(response(zlib.compress(text), "Content-Encoding: deflate"))
        await peer.read_request()
        # 4: deflate as some servers send it: raw, without the zlib header
        raw = zlib.compressobj(wbits=-15)
        await peer.send(response(raw.compress(text) + raw.flush(), "Content-Encoding: deflate"))
        await answer_each(peer)

    async with RawServer(handler) as srv:
        for _ in range(4):
            status, _, data = await post(client, srv.url)
            assert status == 200
            assert data == text
        assert 10 < len(gz) < len(text)
        assert len(srv.peers) == 1


async def test_headers_are_lower_case_and_duplicates_are_joined(client):
    raw = response(b"{}", "X-Dup: a", "Content-Type: application/json", "x-dup: b",
                   "X-Request-ID: AbC", "Set-Cookie: one=1", "SET-COOKIE: two=2", "X-Dup: c",
                   status="429 Too Many Requests")

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        # the head arrives a few bytes at a time: header names/values split across reads
        await peer.trickle([raw[i:i + 7] for i in range(0, len(raw), 7)], pause=0.002)
        await answer_each(peer)

    async with RawServer(handler) as srv:
        status, headers, data = await post(client, srv.url)
        assert status == 429
        assert data == b"{}"
        assert headers == {
            "content-length": "2",
            "x-dup": "a, b, c",
            "content-type": "application/json",
            "x-request-id": "AbC",
            "set-cookie": "one=1, two=2",
        }
        # the next response's headers start afresh
        _, headers, _ = await post(client, srv.url, b"zz")
        assert headers == {"content-length": "2"}
        assert len(srv.peers) == 1


# --------------------------------------------------------------------------- 3. streaming


async def test_stream_returns_at_the_head_and_yields_lines_as_they_are_sent(client):
    release_body = asyncio.Event()
    read_line = [asyncio.Event() for _ in range(3)]
    sent: list[int] = []

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(head("Content-Type: text/event-stream", "Transfer-Encoding: chunked"))
        await release_body.wait()
        for i in range(3):
            sent.append(i)
            await peer.send(chunk(f"data: {{\"i\": {i}}}\n\n".encode()))
            await read_line[i].wait()  # the client read line i before line i+1 exists
        await peer.send(LAST_CHUNK)
        await answer_each(peer)

    async with RawServer(handler) as srv:
        resp = await asyncio.wait_for(client.post(srv.url, b"{}", 5, 1, stream=True), WAIT)
        assert resp.status == 200
        assert resp.headers["content-type"] == "text/event-stream"
        assert sent == [] and not resp.complete  # returned while the server holds the body
        assert resp.content is not None
        release_body.set()
        for i in range(3):
            line = await asyncio.wait_for(resp.content.readline(), WAIT)
            assert line == f"data: {{\"i\": {i}}}\n".encode()
            assert sent == list(range(i + 1))
            assert await asyncio.wait_for(resp.content.readline(), WAIT) == b"\n"
            read_line[i].set()
        assert await asyncio.wait_for(resp.content.readline(), WAIT) == b""  # EOF
        assert resp.complete
        resp.close()
        # the stream's connection went back to the pool
        assert (await post(client, srv.url, b"next"))[2] == b"next"
        assert len(srv.peers) == 1


async def test_stream_with_gzip_and_eof_delimited_body(client):
    payload = b"".join(f"data: {i}\n\n".encode() for i in range(50))
    gz = gzip.compress(payload)

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        await peer.trickle([head("Content-Type: text/event-stream", "Content-Encoding: gzip", "Connection: close"),
                            gz[:10], gz[10:40], gz[40:]])

    async with RawServer(handler) as srv:
        resp = await client.post(srv.url, b"{}", 5, 1, stream=True)
        assert resp.content is not None
        lines = []
        while line := await asyncio.wait_for(resp.content.readline(), WAIT):
            lines.append(line)
        assert b"".join(lines) == payload
        assert lines[:2] == [b"data: 0\n", b"\n"]
        resp.close()


async def test_stream_error_status_body_can_be_read(client):
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(b'{"error": {"message": "slow down"}}', status="429 Too Many Requests"))
        await answer_each(peer)

    async with RawServer(handler) as srv:
        resp = await client.post(srv.url, b"{}", 5, 1, stream=True)
        assert resp.status == 429
        assert await resp.read() == b'{"error": {"message": "slow down"}}'
        resp.close()
        await post(client, srv.url)
        assert len(srv.peers) == 1


# --------------------------------------------------------------------------- 4. closed connections


async def test_idle_connection_closed_by_server_is_replaced(client):
    async def handler(peer: Peer) -> None:
        req = await peer.read_request()
        if req is not None:
            await peer.send(response(req.body))
            await asyncio.sleep(0.05)  # then drop the kept-alive connection while it is idle

    async with RawServer(handler) as srv:
        assert (await post(client, srv.url, b"one"))[2] == b"one"
        await asyncio.sleep(0.2)
        assert (await post(client, srv.url, b"two"))[2] == b"two"
        assert len(srv.peers) == 2
        assert [r.body for r in srv.requests] == [b"one", b"two"]


async def test_reused_connection_closed_before_answering_is_retried_once_on_a_fresh_one(client):
    # the race the retry exists for: the server drops a kept-alive connection just as the next
    # request goes out, so the request meets a connection that closes without a byte of answer
    async def handler(peer: Peer) -> None:
        req = await peer.read_request()
        if req is None:
            return
        await peer.send(response(req.body))
        if peer.index == 0:
            await peer.read_request()  # the second request arrives ... and the server hangs up
            return
        await answer_each(peer)

    async with RawServer(handler) as srv:
        assert (await post(client, srv.url, b"one"))[2] == b"one"
        assert (await post(client, srv.url, b"two"))[2] == b"two"
        assert len(srv.peers) == 2
        assert [(r.peer, r.body) for r in srv.requests] == [(0, b"one"), (0, b"two"), (1, b"two")]


async def test_fresh_connection_closed_without_answer_fails_without_retry(client):
    async def handler(peer: Peer) -> None:
        await peer.read_request()  # and hang up

    async with RawServer(handler) as srv:
        with pytest.raises(ConnectionFailed, match="closed"):
            await client.post(srv.url, b"x", 2, 1)
        await asyncio.sleep(0.05)
        assert len(srv.peers) == 1, "a fresh connection is not retried"


async def test_retry_happens_at_most_once(client):
    async def handler(peer: Peer) -> None:
        req = await peer.read_request()
        if req is not None and peer.index == 0:
            await peer.send(response(b"first"))
            await peer.read_request()  # every later request: hang up without answering

    async with RawServer(handler) as srv:
        await post(client, srv.url)
        with pytest.raises(ConnectionFailed):
            await client.post(srv.url, b"x", 2, 1)
        await asyncio.sleep(0.05)
        assert len(srv.peers) == 2, "one retry on a fresh connection, then give up"
        assert [r.peer for r in srv.requests] == [0, 0, 1]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_connection_closed_mid_body_fails(client, framing):
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        if framing == "content-length":
            await peer.send(head("Content-Length: 100") + b"only ten b")
        else:
            await peer.send(head("Transfer-Encoding: chunked") + chunk(b"partial"))
        await asyncio.sleep(0.02)

    async with RawServer(handler) as srv:
        with pytest.raises(ConnectionFailed, match="closed"):
            await client.post(srv.url, b"x", 2, 1)
        assert len(srv.peers) == 1


async def test_reused_connection_closed_mid_answer_is_not_retried(client):
    # bytes of the answer arrived: the server saw the request, so it must not be sent again
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        await peer.send(response(b"first"))
        if await peer.read_request() is None:
            return
        await peer.send(head("Content-Length: 50") + b"half")

    async with RawServer(handler) as srv:
        await post(client, srv.url)
        with pytest.raises(ConnectionFailed):
            await client.post(srv.url, b"second", 2, 1)
        await asyncio.sleep(0.05)
        assert len(srv.peers) == 1
        assert len(srv.requests) == 2


async def test_stream_closed_mid_body_raises_from_the_reader(client):
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        await peer.send(head("Content-Type: text/event-stream", "Transfer-Encoding: chunked") + chunk(b"data: 1\n\n"))
        await asyncio.sleep(0.05)

    async with RawServer(handler) as srv:
        resp = await client.post(srv.url, b"{}", 5, 1, stream=True)
        assert resp.content is not None
        assert await resp.content.readline() == b"data: 1\n"
        assert await resp.content.readline() == b"\n"
        with pytest.raises(ConnectionFailed):
            await asyncio.wait_for(resp.content.readline(), WAIT)
        resp.close()


# --------------------------------------------------------------------------- 5. deadlines


async def test_total_deadline_covers_a_stalled_body(client):
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(head("Content-Length: 100") + b"0123456789")
        await peer.until_eof()

    async with RawServer(handler) as srv:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.post(srv.url, b"x", 0.3, 1)
        assert time.monotonic() - t0 < 1.5
        await asyncio.wait_for(srv.peers[0].eof.wait(), WAIT)  # the connection was dropped


async def test_total_deadline_is_not_an_idle_timeout(client):
    # every byte arrives well inside the deadline, the whole body does not
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(head("Content-Length: 40"))
        for _ in range(40):
            await asyncio.sleep(0.05)
            await peer.send(b"x")

    async with RawServer(handler) as srv:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.post(srv.url, b"x", 0.3, 1)
        assert time.monotonic() - t0 < 1.5


async def test_server_that_never_answers_times_out(client):
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.until_eof()

    async with RawServer(handler) as srv:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.post(srv.url, b"x", 0.25, 1)
        assert time.monotonic() - t0 < 1.25
        with pytest.raises(TimeoutError):
            await client.post(srv.url, b"x", 0.25, 1, stream=True)
        await asyncio.wait_for(srv.peers[0].eof.wait(), WAIT)


async def test_total_deadline_keeps_running_while_a_stream_is_read(client):
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(head("Content-Type: text/event-stream", "Transfer-Encoding: chunked") + chunk(b"data: 1\n\n"))
        await peer.until_eof()

    async with RawServer(handler) as srv:
        t0 = time.monotonic()
        resp = await client.post(srv.url, b"{}", 0.3, 1, stream=True)
        assert resp.content is not None
        assert await resp.content.readline() == b"data: 1\n"
        assert await resp.content.readline() == b"\n"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.readline(), WAIT)
        assert time.monotonic() - t0 < 1.5
        await asyncio.wait_for(srv.peers[0].eof.wait(), WAIT)
        resp.close()


async def test_waiting_for_a_free_connection_counts_against_the_deadline():
    c = LeanHttpClient({}, 1)

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(head("Transfer-Encoding: chunked"))
        await peer.until_eof()

    try:
        async with RawServer(handler) as srv:
            held = await c.post(srv.url, b"{}", 5, 1, stream=True)  # holds the only slot
            with pytest.raises(TimeoutError, match="no free connection"):
                await c.post(srv.url, b"{}", 0.2, 1)
            assert len(srv.peers) == 1
            held.close()
            await asyncio.wait_for(srv.peers[0].eof.wait(), WAIT)
    finally:
        await c.close()


# --------------------------------------------------------------------------- 6./7. refused, malformed


async def test_connect_refused_names_host_and_port(client):
    port = closed_port()
    with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{port}"):
        await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", b"{}", 2, 1)
    # and the slot was given back: more failures than connections still fail fast, no timeout
    c = LeanHttpClient({}, 1)
    for _ in range(3):
        with pytest.raises(ConnectionFailed):
            await c.post(f"http://127.0.0.1:{port}/", b"{}", 0.5, 0.5)
    await c.close()


@pytest.mark.parametrize("raw", [
    b"SMTP ready\r\n\r\n",
    b"HTTP/1.1 abc Broken\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n",
], ids=["not-http", "bad-status", "bad-length", "bad-chunk-size", "bad-header"])
async def test_malformed_response_fails_and_drops_the_connection(client, raw):
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        await peer.send(raw)
        await peer.until_eof()

    async with RawServer(handler) as srv:
        with pytest.raises(ConnectionFailed, match="malformed"):
            await client.post(srv.url, b"x", 2, 1)
        await asyncio.wait_for(srv.peers[0].eof.wait(), WAIT)


async def test_corrupt_gzip_body_fails(client):
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        await peer.send(response(b"\x1f\x8b\x08\x00definitely not deflate data", "Content-Encoding: gzip"))
        await peer.until_eof()

    async with RawServer(handler) as srv:
        with pytest.raises(ConnectionFailed, match="decompress"):
            await client.post(srv.url, b"x", 2, 1)
        await asyncio.wait_for(srv.peers[0].eof.wait(), WAIT)


@pytest.mark.parametrize("same_write", [
    False,
    True,
], ids=["separate-write", "same-write"])
async def test_unsolicited_bytes_after_a_response_make_the_connection_unusable(client, same_write):
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nextra"  # a (partial) answer nobody asked for

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            if await peer.read_request() is None:
                return
            if same_write:
                await peer.send(response(b"one") + extra)
            else:
                await peer.send(response(b"one"))
                await asyncio.sleep(0.05)
                await peer.send(extra)
        await answer_each(peer)

    async with RawServer(handler) as srv:
        assert (await post(client, srv.url))[2] == b"one"
        await asyncio.sleep(0.15)
        status, _, data = await post(client, srv.url, b"two", total=1)
        assert (status, data) == (200, b"two")
        assert [(r.peer, r.body) for r in srv.requests] == [(0, b"{}"), (1, b"two")]
        assert srv.peers[0].eof.is_set()


async def test_interim_1xx_responses_are_skipped(client):
    async def handler(peer: Peer) -> None:
        while (req := await peer.read_request()) is not None:
            await peer.send(head("Link: </hint>; rel=preload", status="103 Early Hints"))
            await asyncio.sleep(0.02)
            await peer.send(response(req.body))

    async with RawServer(handler) as srv:
        assert (await post(client, srv.url, b"first", total=1))[::2] == (200, b"first")
        assert (await post(client, srv.url, b"second", total=1))[::2] == (200, b"second")


# --------------------------------------------------------------------------- 8. cancellation


@pytest.mark.parametrize("stream", [False, True])
async def test_cancelling_a_post_closes_its_connection_and_frees_the_slot(stream):
    c = LeanHttpClient({}, 1)

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.until_eof()
        else:
            await answer_each(peer)

    try:
        async with RawServer(handler) as srv:
            task = asyncio.create_task(c.post(srv.url, b"doomed", 5, 1, stream=stream))
            await srv.wait_requests(1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(srv.peers[0].eof.wait(), WAIT)  # the upstream saw the client go
            # the only slot is free again (else this times out) and the dead connection is not reused
            assert (await post(c, srv.url, b"after", total=0.5))[2] == b"after"
            assert len(srv.peers) == 2
    finally:
        await c.close()


async def test_cancelling_while_waiting_for_a_slot_takes_nothing():
    c = LeanHttpClient({}, 1)
    gate = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while (req := await peer.read_request()) is not None:
            await gate.wait()
            await peer.send(response(req.body))

    try:
        async with RawServer(handler) as srv:
            first = asyncio.create_task(post(c, srv.url, b"first"))
            await srv.wait_requests(1)
            waiting = asyncio.create_task(c.post(srv.url, b"never", 5, 1))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            gate.set()
            assert (await first)[2] == b"first"
            assert (await post(c, srv.url, b"third", total=0.5))[2] == b"third"
            assert [r.body for r in srv.requests] == [b"first", b"third"]
            assert len(srv.peers) == 1
    finally:
        await c.close()


# --------------------------------------------------------------------------- 9. the connection limit


def counting_handler(srv_ref: list[RawServer], delay: float, close: bool):
    async def handler(peer: Peer) -> None:
        srv = srv_ref[0]
        while (req := await peer.read_request()) is not None:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            await asyncio.sleep(delay)
            srv.in_flight -= 1
            if close:
                peer.write(response(req.body, "Connection: close"))
                return  # no await between the answer and the connection counting as closed
            await peer.send(response(req.body))
    return handler


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
async def test_max_connections_one_serialises_concurrent_posts(close):
    c = LeanHttpClient({}, 1)
    ref: list[RawServer] = []
    try:
        async with RawServer(counting_handler(ref, 0.05, close)) as srv:
            ref.append(srv)
            results = await asyncio.wait_for(
                asyncio.gather(*(post(c, srv.url, f"r{i}".encode()) for i in range(3))), WAIT)
            assert sorted(r[2] for r in results) == [b"r0", b"r1", b"r2"]
            assert srv.max_active == 1
            assert srv.max_in_flight == 1
            assert len(srv.peers) == (3 if close else 1)
    finally:
        await c.close()


async def test_without_the_limit_concurrent_posts_open_parallel_connections():
    # the control for the test above: the same load with room for 3 does use 3 connections
    c = LeanHttpClient({}, 3)
    ref: list[RawServer] = []
    try:
        async with RawServer(counting_handler(ref, 0.05, False)) as srv:
            ref.append(srv)
            await asyncio.wait_for(asyncio.gather(*(post(c, srv.url) for _ in range(3))), WAIT)
            assert srv.max_active == 3
            assert srv.max_in_flight == 3
    finally:
        await c.close()


async def test_stale_retry_does_not_leak_connection_slots():
    c = LeanHttpClient({}, 1)
    ref: list[RawServer] = []
    count = counting_handler(ref, 0.05, False)

    async def handler(peer: Peer) -> None:
        if peer.index == 0:  # answer one request, hang up on the next (the stale-retry race)
            req = await peer.read_request()
            if req is not None:
                await peer.send(response(req.body))
                await peer.read_request()
            return
        await count(peer)

    try:
        async with RawServer(handler) as srv:
            ref.append(srv)
            await post(c, srv.url, b"one")
            assert (await post(c, srv.url, b"two"))[2] == b"two"  # retried on connection 1
            assert len(srv.peers) == 2
            srv.max_active = srv.active
            srv.max_in_flight = 0
            await asyncio.wait_for(asyncio.gather(*(post(c, srv.url) for _ in range(3))), WAIT)
            assert srv.max_in_flight == 1
            assert srv.max_active == 1
    finally:
        await c.close()


# --------------------------------------------------------------------------- 10. Response.close()


async def test_closing_an_unfinished_stream_aborts_its_connection():
    c = LeanHttpClient({}, 1)

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.send(head("Content-Type: text/event-stream", "Transfer-Encoding: chunked") + chunk(b"data: 1\n\n"))
            await peer.until_eof()
        else:
            await answer_each(peer)

    try:
        async with RawServer(handler) as srv:
            resp = await c.post(srv.url, b"{}", 5, 1, stream=True)
            assert resp.content is not None
            assert await resp.content.readline() == b"data: 1\n"
            resp.close()
            await asyncio.wait_for(srv.peers[0].eof.wait(), WAIT)
            resp.close()  # idempotent
            assert (await post(c, srv.url, b"next", total=0.5))[2] == b"next"
            assert len(srv.peers) == 2, "the aborted connection is not reused"
            assert [r.peer for r in srv.requests] == [0, 1]
    finally:
        await c.close()


async def test_closing_a_finished_response_keeps_the_connection(client):
    async with RawServer(answer_each) as srv:
        for body in (b"a", b"b"):
            resp = await client.post(srv.url, body, 2, 1, stream=True)
            assert await resp.read() == body
            resp.close()
            resp.close()
        assert len(srv.peers) == 1
        assert not srv.peers[0].eof.is_set()


# --------------------------------------------------------------------------- 11. through the provider


async def test_openai_provider_maps_transport_failures_to_upstream_errors():
    from shipyard.errors import UpstreamError
    from shipyard.providers.base import CallTimeouts
    from shipyard.providers.openai import OpenAIProvider

    completion = b'{"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}'
    mode = {"v": "ok"}

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            if mode["v"] == "ok":
                await peer.send(response(completion, "Content-Type: application/json"))
            elif mode["v"] == "hangup":
                return
            elif mode["v"] == "stall":
                await peer.until_eof()
                return
            elif mode["v"] == "stream-cut":
                await peer.send(head("Content-Type: text/event-stream", "Transfer-Encoding: chunked")
                                + chunk(b'data: {"choices": []}\n\n'))
                return

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    t = CallTimeouts(total=0.3, connect=1)
    async with RawServer(handler) as srv:
        p = OpenAIProvider("up", OpenAIProvider.Options.model_validate(
            {"type": "openai", "base_url": srv.url + "/v1", "api_key": "sk-prov"}))
        await p.start()
        try:
            data = await p.chat(body, CallTimeouts(total=2, connect=1))
            assert data["choices"][0]["message"]["content"] == "hi"
            req = srv.requests[0]
            assert req.target == "/v1/chat/completions"
            assert req.header("authorization") == "Bearer sk-prov"

            mode["v"] = "hangup"
            fresh = srv.peers[:]
            with pytest.raises(UpstreamError) as ei:
                await p.chat(body, t)
            assert ei.value.kind == "connection" and ei.value.retryable
            assert len(srv.peers) == len(fresh) + 1  # the reused one was retried once, fresh

            mode["v"] = "stall"
            with pytest.raises(UpstreamError) as ei:
                await p.chat(body, t)
            assert ei.value.kind == "timeout" and ei.value.retryable

            mode["v"] = "stream-cut"
            with pytest.raises(UpstreamError) as ei:
                async for _ in p.stream(body, CallTimeouts(total=2, connect=1)):
                    pass
            assert ei.value.kind == "connection"
        finally:
            await p.close()

        port = closed_port()
        dead = OpenAIProvider("dead", OpenAIProvider.Options.model_validate(
            {"type": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "api_key": "k"}))
        await dead.start()
        try:
            with pytest.raises(UpstreamError) as ei:
                await dead.chat(body, t)
            assert ei.value.kind == "connection"
            assert f"127.0.0.1:{port}" in ei.value.message
        finally:
            await dead.close()


# ---- found in review -------------------------------------------------------------------------

async def test_the_stale_retry_always_opens_a_fresh_connection():
    # every connection answers its first request, then hangs up on the next one (stale keep-alive)
    async def handler(peer: Peer) -> None:
        req = await peer.read_request()
        if req is None:
            return
        await asyncio.sleep(0.05)   # keep both first requests in flight at once -> 2 connections
        await peer.send(response(req.body))
        await peer.read_request()   # the next request on this connection: hang up, no answer

    c = LeanHttpClient({}, 8)
    async with RawServer(handler) as srv:
        await asyncio.gather(post(c, srv.url, b"a"), post(c, srv.url, b"b"))
        assert len(srv.peers) == 2
        resp = await c.post(srv.url, b"x", 2, 1)  # one stale attempt, then a fresh connection
        await c.close()
        assert resp.status == 200 and len(srv.peers) == 3


async def test_an_unread_stream_pauses_reading():
    big = b"data: " + b"x" * 65000 + b"\n\n"
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        await peer.send(head("Content-Type: text/event-stream", "Transfer-Encoding: chunked"))
        for _ in range(800):       # ~52 MB, client never reads
            await peer.send(chunk(big))
        await peer.until_eof()

    c = LeanHttpClient({}, 8)
    async with RawServer(handler) as srv:
        resp = await c.post(srv.url, b"{}", 10, 1, stream=True)
        await asyncio.sleep(1.5)
        buffered = len(resp.content._buffer)  # what waits for the consumer (the rest stays in the kernel)
        assert buffered < 4 * 1024 * 1024
        line = await resp.content.readline()  # reading resumes as the consumer catches up
        assert line.startswith(b"data: xxx")
        resp.close()
        await c.close()


async def test_closing_the_client_closes_connections_still_in_use():
    release = asyncio.Event()
    async def handler(peer: Peer) -> None:
        req = await peer.read_request()
        await release.wait()
        await peer.send(response(b"late"))
        await peer.until_eof()

    c = LeanHttpClient({}, 8)
    async with RawServer(handler) as srv:
        t = asyncio.create_task(post(c, srv.url))
        await srv.wait_requests(1)
        await c.close()              # shutdown while a call is in flight
        release.set()
        await t
        await asyncio.wait_for(srv.peers[0].eof.wait(), WAIT)  # not parked in a pool nobody tracks
