"""Operations of a real `shipyard serve` process: graceful shutdown on SIGTERM (the request in
flight completes and its trace is stored), and readiness and key lookups while PostgreSQL
goes away and comes back. ``Replica`` (a `shipyard serve` subprocess) is also used by
tests/e2e/test_multi_replica.py."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fakes import Fault
from services import PostgresServer, ServiceUnavailable, free_port

ADMIN = "admin-key-for-tests-0123456789"
MODEL = "gpt-4o-mini-2024-07-18"
MSG = [{"role": "user", "content": "Say hello"}]


class Replica:
    """`python -m shipyard.cli serve --config FILE --port P` in its own process."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "replica",
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.env = {**os.environ, "SHIPYARD_ADMIN_KEY": ADMIN, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> "Replica":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shipyard.cli", "serve", "--config", str(self.config_path),
             "--port", str(self.port), "--log-level", "warning", "--graceful-timeout", "30"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def stop(self) -> None:
        self.terminate()
        if getattr(self, "_log", None):
            self._log.close()


def gateway_config(up, store: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "store": store,
        "providers": {"p": {"type": "openai", "base_url": up.base_url, "api_key": "sk-upstream"}},
        "models": {"chat": {"targets": [{"provider": "p", "model": MODEL}], "retries": 0}},
        "prices": {MODEL: {"input": 0.0, "output": 1000.0}},
        "recording": {"flush_interval_s": 0.05},
    }
    cfg.update(extra)
    return cfg


@pytest.fixture
def replicas(tmp_path):
    started: list[Replica] = []

    def start(config: dict[str, Any], name: str = "replica", **kw: Any) -> Replica:
        r = Replica(config, tmp_path, name=f"{name}{len(started)}", **kw)
        started.append(r)
        return r.start()

    yield start
    for r in started:
        r.stop()


# ---- graceful shutdown ------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_sigterm_drains_the_request_in_flight_and_flushes_its_trace(replicas, fake_openai, tmp_path, stream):
    from shipyard.store import open_store

    db = f"sqlite:///{tmp_path}/drain.db"
    replica = replicas(gateway_config(fake_openai, db))
    fake_openai.fail_next(Fault("first_chunk_delay" if stream else "delay", seconds=2.5))
    out: dict[str, Any] = {}

    def call() -> None:
        body = {"model": "chat", "messages": MSG, "stream": stream}
        with httpx.Client(timeout=30) as c:
            r = c.post(replica.base_url + "/chat/completions", json=body)
            out["status"], out["text"], out["trace"] = r.status_code, r.text, r.headers.get("x-shipyard-trace-id")

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 10
    while not fake_openai.requests and time.monotonic() < deadline:  # the call is upstream now
        time.sleep(0.02)
    assert fake_openai.requests
    time.sleep(0.3)
    t0 = time.monotonic()
    replica.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):  # no new connections while draining
        httpx.get(replica.url + "/health", timeout=2)
    t.join(30)
    assert out["status"] == 200, out
    assert "Hello from fake-openai" in out["text"] or "Hello" in out["text"]
    if stream:
        assert out["text"].rstrip().endswith("data: [DONE]")
    # uvicorn re-raises the signal once it has shut down cleanly (a supervisor sees "stopped by SIGTERM")
    assert replica.proc.wait(30) in (0, -signal.SIGTERM), replica.log()
    assert "Traceback" not in replica.log()
    assert time.monotonic() - t0 >= 1.5  # it waited for the upstream
    store = open_store(db)
    try:
        trace = store.get_trace(out["trace"])
    finally:
        store.close()
    assert trace is not None and trace["status"] == "ok", replica.log()
    assert trace["spans"][0]["output_tokens"] == fake_openai.usage[1]


# ---- PostgreSQL goes away and comes back ---------------------------------------------------

@pytest.fixture
def own_postgres():
    server = PostgresServer()
    try:
        server.start()
    except ServiceUnavailable as exc:
        server.stop()
        pytest.fail(f"PostgreSQL could not be started: {exc}", pytrace=False)
    yield server
    server.stop()


def _pg_stop(server: PostgresServer) -> None:
    server._pg("pg_ctl", "-D", str(server.datadir / "data"), "-m", "fast", "-w", "stop", timeout=60)


def _pg_start(server: PostgresServer) -> None:
    server._pg("pg_ctl", "-D", str(server.datadir / "data"), "-l", str(server.datadir / "server.log"), "-w",
               "-t", "60", "-o", f"-p {server.port}", "start", timeout=90)


def _wait(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_key_store_outage_fail_closed_and_recovery(serve, fake_openai, own_postgres, caplog):
    caplog.set_level(logging.WARNING, logger="shipyard.access")
    server = serve(gateway_config(fake_openai, own_postgres.url, auth={
        "admin_key": ADMIN, "cache_ttl_s": 0.2, "lookup_timeout_s": 1.0, "on_store_error": "fail_closed"}))
    admin = {"authorization": f"Bearer {ADMIN}"}
    used = httpx.post(server.url + "/api/keys", json={"name": "used"}, headers=admin).json()["key"]
    fresh = httpx.post(server.url + "/api/keys", json={"name": "fresh"}, headers=admin).json()["key"]

    def chat(key):
        return httpx.post(server.base_url + "/chat/completions", json={"model": "chat", "messages": MSG},
                          headers={"authorization": f"Bearer {key}"}, timeout=30)

    assert chat(used).status_code == 200
    _pg_stop(own_postgres)
    time.sleep(0.3)  # past cache_ttl_s: the cached key is stale now
    assert chat(used).status_code == 200  # served from the cache while the store is down
    r = chat(fresh)
    assert r.status_code == 503 and r.json()["error"]["code"] == "auth_unavailable"
    assert r.headers["retry-after"] == "1"
    assert _wait(lambda: httpx.get(server.url + "/ready", timeout=10).status_code == 503)
    ready = httpx.get(server.url + "/ready", timeout=10).json()
    assert ready["access"]["key_store"]["ok"] is False and ready["store"] is False
    assert any("key store unreachable" in r.getMessage() for r in caplog.records)
    assert 'shipyard_dependency_up{dependency="key_store"} 0.0' in httpx.get(server.url + "/metrics").text
    _pg_start(own_postgres)
    assert _wait(lambda: httpx.get(server.url + "/ready", timeout=10).status_code == 200)
    assert chat(fresh).status_code == 200  # no restart needed
    assert any("key store reachable again" in r.getMessage() for r in caplog.records)
    # what was recorded during the outage was kept and written after it
    server.flush()


def test_key_store_outage_fail_open_stays_ready(serve, fake_openai, own_postgres):
    server = serve(gateway_config(fake_openai, own_postgres.url, auth={
        "admin_key": ADMIN, "lookup_timeout_s": 1.0, "on_store_error": "fail_open"}))
    assert httpx.get(server.url + "/ready").status_code == 200
    _pg_stop(own_postgres)
    try:
        assert _wait(lambda: httpx.get(server.url + "/ready", timeout=10).json()["access"]["key_store"]["ok"] is False)
        r = httpx.get(server.url + "/ready", timeout=10)
        assert r.status_code == 200 and r.json()["store"] is False
    finally:
        _pg_start(own_postgres)
