"""Shared fixtures: fake upstreams, an in-process `shipyard serve`, and the openai SDK."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fakes import FakeAnthropic, FakeOpenAI  # noqa: E402
from services import postgres_url  # noqa
from services import redis_url  # noqa  (access/shared state)


class ServerThread:
    """The real ASGI app under uvicorn, on a free loopback port, in a background thread."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        from shipyard.engine import Engine
        from shipyard.server.app import create_app

        self.engine = Engine(config)
        self.app = create_app(self.engine)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=0, loop="asyncio", lifespan="on",
            log_level="warning", access_log=False, timeout_graceful_shutdown=5,
        ))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("shipyard server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + "/v1"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def flush(self) -> None:
        self.engine.recorder.flush()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as up:
        yield up


@pytest.fixture
def fake_openai_2() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as up:
        yield up


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as up:
        yield up


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], ServerThread]]:
    """serve(config_dict) -> a running ServerThread; a temp SQLite store unless given."""
    servers: list[ServerThread] = []

    def start(config: dict[str, Any]) -> ServerThread:
        config = {"store": f"sqlite:///{tmp_path}/shipyard-{len(servers)}.db", **config}
        s = ServerThread(config).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def client_for(server: ServerThread, **kw: Any):
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=kw.pop("timeout", 30), **kw)


def fast_alias(*targets: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """An alias with quick back-off, for tests."""
    return {"targets": list(targets), "retries": kw.pop("retries", 2),
            "backoff": {"initial_s": 0.01, "max_s": 0.05}, **kw}
