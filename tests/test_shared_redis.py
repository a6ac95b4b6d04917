"""Shared state in a real Redis (redis-server from Debian, started by the suite): the Lua
limiter and budgets, two replicas enforcing one limit, shared circuit breakers, key-change
notifications, and Redis going away and coming back (fail open / fail closed)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Self

import httpx
import pytest

from conftest import fast_alias
from fakes import Fault
from services import RedisServer

ADMIN = "admin-key-for-tests-0123456789"
MODEL = "gpt-4o-mini-2024-07-18"
MSG = [{"role": "user", "content": "Say hello"}]
PRICES = {MODEL: {"input": 0.0, "output": 1000.0}}  # 10 output tokens = $0.01 exactly


def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


def config(up, redis_url, key_prefix, store, **extra):
    cfg = {
        "store": store,
        "providers": {"p": {"type": "openai", "base_url": up.base_url, "api_key": "sk-upstream"}},
        "models": {"chat": fast_alias({"provider": "p", "model": MODEL})},
        "prices": PRICES,
        "auth": {"admin_key": ADMIN},
        "redis": {"url": redis_url, "key_prefix": key_prefix, "retry_interval_s": 0.2, "health_interval_s": 0.2,
                  # generous: on a loaded CI box a slow Redis reply must not look like an outage
                  # (that is what fail_open is for, and it would make exactness tests lie)
                  "breaker_sync_s": 0.2, "timeout_s": 5},
    }
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def new_key(server, **fields) -> tuple[str, str]:
    r = httpx.post(server.url + "/api/keys", json=fields, headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["id"]


def chat(server, key, **kw) -> httpx.Response:
    return httpx.post(server.base_url + "/chat/completions", json={"model": "chat", "messages": MSG, **kw},
                      headers={"authorization": f"Bearer {key}"}, timeout=30)


def fire(calls) -> list[httpx.Response]:
    """Run the callables at once (one thread each); their responses in order."""
    out: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i, fn):
        barrier.wait()
        out[i] = fn()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def wait_for(cond, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


# ---- the client --------------------------------------------------------------------------

async def test_get_redis(redis_url):
    from shipyard.config import load_config
    from shipyard.shared.redis import get_redis

    assert get_redis(load_config({})) is None
    cfg = load_config({"redis": {"url": redis_url}})
    a, b = get_redis(cfg), get_redis(cfg)
    assert a is b and await a.ping()


def test_redis_config_errors():
    from shipyard.config import load_config
    from shipyard.errors import ConfigError

    with pytest.raises(ConfigError, match="redis.url"):
        load_config({"redis": {"url": "http://x"}})
    with pytest.raises(ConfigError, match="limits.backend"):
        load_config({"limits": {"backend": "redis"}})
    with pytest.raises(ConfigError, match="auth"):
        load_config({"store": "none", "auth": {"admin_key": ADMIN}})


# ---- the Lua scripts, directly -----------------------------------------------------------

def _limiter(redis_url):
    from shipyard.config import RedisConfig
    from shipyard.shared.limiter import RedisLimiter
    from shipyard.shared.redis import RedisLink, new_client

    cfg = RedisConfig(url=redis_url, key_prefix=prefix())
    return RedisLimiter(RedisLink(cfg, new_client(cfg)))


async def test_lua_budget_is_exact_under_concurrency_and_settles(redis_url):
    from shipyard.access.limits import Scope, windows_for

    lim = _limiter(redis_url)
    scope = Scope("key:k1", "key 'k1'", usd_per_day=1.0)
    win = windows_for(scope, 100_000_000, time.time())  # $0.10 each: 10 fit
    ids = [uuid.uuid4().hex for _ in range(30)]
    verdicts = await asyncio.gather(*(lim.admit([], win, rid, 60) for rid in ids))
    admitted = [rid for rid, v in zip(ids, verdicts) if v[0] == 1]
    assert len(admitted) == 10
    refused = [v for v in verdicts if v[0] != 1]
    assert all(v[0] == 2 and v[2] == 0 and v[3] == 1_000_000_000 for v in refused)  # all reserved, none spent
    # settle for less: half the reservations come back
    await asyncio.gather(*(lim.settle([], [(win[0], 50_000_000)], rid) for rid in admitted))
    assert await lim.usage(win) == [(500_000_000, 0)]
    more = await asyncio.gather(*(lim.admit([], win, uuid.uuid4().hex, 60) for _ in range(8)))
    assert sum(v[0] == 1 for v in more) == 5
    await lim.link.client.aclose()


async def test_lua_expired_reservations_are_released(redis_url):
    from shipyard.access.limits import Scope, windows_for

    lim = _limiter(redis_url)
    win = windows_for(Scope("key:k2", "k2", usd_per_day=0.1), 100_000_000, time.time())
    assert (await lim.admit([], win, "r1", 0.2))[0] == 1  # a replica that died holding it
    assert (await lim.admit([], win, "r2", 0.2))[0] == 2
    await asyncio.sleep(0.3)
    assert (await lim.admit([], win, "r3", 60))[0] == 1
    assert await lim.usage(win) == [(0, 100_000_000)]
    await lim.link.client.aclose()


async def test_lua_gcra_rpm_and_tpm(redis_url):
    from shipyard.access.limits import Rate, Scope

    lim = _limiter(redis_url)
    s = Scope("key:k3", "k3", rpm=5, tpm=1000)
    rpm = Rate(s, "rpm", 5, 1)
    got = await asyncio.gather(*(lim.admit([rpm], [], uuid.uuid4().hex, 60) for _ in range(15)))
    assert sum(v[0] == 1 for v in got) == 5
    wait_ms = min(v[2] for v in got if v[0] == 0)
    assert 11_000 < wait_ms <= 12_000  # 60 s / 5: the next request in 12 s
    tpm = Rate(s, "tpm", 1000, 800)
    assert (await lim.admit([tpm], [], "a", 60))[0] == 1
    assert (await lim.admit([tpm], [], "b", 60))[0] == 0
    await lim.settle([(tpm, -780)], [], "a")  # it used only 20 tokens
    assert (await lim.admit([tpm], [], "c", 60))[0] == 1
    # a refused budget does not use up the rate limit (all or nothing)
    from shipyard.access.limits import windows_for

    s2 = Scope("key:k4", "k4", rpm=1, usd_per_day=0.0)
    r = await lim.admit([Rate(s2, "rpm", 1, 1)], windows_for(s2, 1, time.time()), "x", 60)
    assert r[0] == 2
    assert (await lim.admit([Rate(s2, "rpm", 1, 1)], [], "y", 60))[0] == 1
    await lim.link.client.aclose()


# ---- stale connections and lost replies (a proxy between the client and Redis) ------------

class FlakyProxy:
    """A loopback TCP proxy in front of Redis that can leave every pooled client socket dead
    (``reset()``: a TCP reset to each, as after a Redis restart or fail-over: redis-py's pool
    cannot tell, the first write fails), lose the next reply after Redis ran the command
    (``lose_next_reply()``), or go away (``close()``: connections are refused)."""

    def __init__(self, upstream_url: str) -> None:
        from urllib.parse import urlsplit

        up = urlsplit(upstream_url)
        self.upstream = (up.hostname, up.port)
        self.lose_replies = 0
        self.clients: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def lose_next_reply(self) -> None:
        self.lose_replies += 1

    def reset(self) -> None:
        for w in self.clients:
            self._reset(w)
        self.clients.clear()

    def close(self) -> None:
        self.server.close()
        self.reset()

    @staticmethod
    def _reset(w: asyncio.StreamWriter) -> None:
        import socket
        import struct

        if w.transport.is_closing():
            return
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())
        self.clients.append(cw)
        try:
            ur, uw = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw, reply_to=cw), return_exceptions=True)
            uw.close()
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            cw.close()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, reply_to=None) -> None:
        try:
            while data := await r.read(65536):
                if reply_to is not None and self.lose_replies:
                    self.lose_replies -= 1
                    self._reset(reply_to)
                    return
                w.write(data)
                await w.drain()
        finally:
            w.close()


async def test_stale_pooled_connections_are_retried_on_a_fresh_one(redis_url):
    from shipyard.access.limits import Rate, Scope
    from shipyard.shared.redis import RedisUnavailable

    async with FlakyProxy(redis_url) as proxy:
        lim = _limiter(proxy.url)
        rpm = Rate(Scope("key:s1", "s1", rpm=10), "rpm", 10, 1)

        async def admit(n):
            return sorted(v[0] for v in await asyncio.gather(*(lim.admit([rpm], [], uuid.uuid4().hex, 60)
                                                               for _ in range(n))))

        assert await admit(4) == [1] * 4  # several pooled connections
        proxy.reset()  # all of them dead; Redis itself is fine
        await asyncio.sleep(0.1)
        assert await admit(4) == [1] * 4
        assert lim.link.up and lim.link.retries >= 1 and lim.link.outages == 0 and lim.link.errors == 0
        assert await admit(3) == [0, 1, 1]  # exactly 10: none admitted unchecked, none counted twice
        # Redis really gone: one retry, then the caller's policy at once (no wait per request)
        proxy.close()
        t0 = time.monotonic()
        for _ in range(5):
            with pytest.raises(RedisUnavailable):
                await lim.admit([rpm], [], uuid.uuid4().hex, 60)
        assert time.monotonic() - t0 < 1
        assert not lim.link.up and lim.link.outages == 1 and lim.link.errors == 1
        await lim.link.client.aclose()


async def test_a_lost_reply_is_retried_without_reserving_or_charging_twice(redis_url):
    from shipyard.access.limits import Rate, Scope, windows_for

    async with FlakyProxy(redis_url) as proxy:
        lim = _limiter(proxy.url)
        scope = Scope("key:s2", "s2", rpm=2, usd_per_day=1.0)
        rates = [Rate(scope, "rpm", 2, 1)]
        win = windows_for(scope, 100_000_000, time.time())  # $0.10 each
        assert await lim.admit(rates, win, "warm", 60) == (1,)  # loads both scripts
        await lim.settle([], [(win[0], 0)], "warm")
        proxy.lose_next_reply()  # Redis runs the script; its answer never arrives
        assert await lim.admit(rates, win, "r1", 60) == (1,)
        assert lim.link.retries == 1 and lim.link.up
        assert await lim.usage(win) == [(0, 100_000_000)]  # one reservation, not two
        assert (await lim.admit(rates, win, "r2", 60))[0] == 0  # rpm 2: "warm" and "r1", once each
        proxy.lose_next_reply()
        await lim.settle([], [(win[0], 50_000_000)], "r1")
        assert lim.link.retries == 2
        assert await lim.usage(win) == [(50_000_000, 0)]  # charged once
        await lim.link.client.aclose()


# ---- two replicas, one Redis ----------------------------------------------------------

def test_two_replicas_enforce_one_rate_limit_and_one_budget(serve, fake_openai, redis_url, tmp_path):
    fake_openai.usage = (5, 10)
    kp, store = prefix(), f"sqlite:///{tmp_path}/shared.db"
    a = serve(config(fake_openai, redis_url, kp, store))
    b = serve(config(fake_openai, redis_url, kp, store))
    n = 4
    rate_key, _ = new_key(a, rpm=n)
    budget_key, _ = new_key(a, usd_per_day=0.01 * n)
    for key in (rate_key, budget_key):
        res = fire([(lambda s=s, k=key: chat(s, k, max_tokens=10)) for s in [a, b] * (3 * n // 2)])
        codes = sorted(r.status_code for r in res)
        assert codes == [200] * n + [429] * (2 * n), [r.text for r in res if r.status_code != 200][:2]
        assert {r.json()["error"]["code"] for r in res if r.status_code == 429} == (
            {"rate_limit_exceeded"} if key == rate_key else {"budget_exceeded"})


def test_key_changes_reach_the_other_replica_at_once(serve, fake_openai, redis_url, tmp_path):
    kp, store = prefix(), f"sqlite:///{tmp_path}/shared.db"
    slow_cache = {"auth": {"admin_key": ADMIN, "cache_ttl_s": 3600}}
    a = serve(config(fake_openai, redis_url, kp, store, **slow_cache))
    b = serve(config(fake_openai, redis_url, kp, store, **slow_cache))
    key, kid = new_key(a)
    assert chat(b, key).status_code == 200  # cached on b for an hour
    time.sleep(0.3)  # b's subscription is up
    r = httpx.post(a.url + f"/api/keys/{kid}/revoke", headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200
    assert wait_for(lambda: chat(b, key).status_code == 401, timeout=5)


def test_circuit_breaker_state_is_shared(serve, fake_openai, redis_url, tmp_path):
    kp = prefix()
    alias = {"chat": fast_alias({"provider": "p", "model": MODEL}, retries=0,
                                circuit_breaker={"failure_threshold": 2, "cooldown_s": 30})}
    a = serve(config(fake_openai, redis_url, kp, f"sqlite:///{tmp_path}/a.db", models=alias))
    b = serve(config(fake_openai, redis_url, kp, f"sqlite:///{tmp_path}/b.db", models=alias))
    fake_openai.fail_next(Fault("status", status=500), times=2)
    assert [chat(a, ADMIN).status_code for _ in range(2)] == [502, 502]
    assert chat(a, ADMIN).status_code == 503  # open here
    calls = len(fake_openai.requests)

    def b_sees_it_open():
        return b.engine.breakers[f"p/{MODEL}"].state == "open"

    assert wait_for(b_sees_it_open, timeout=5)
    r = chat(b, ADMIN)
    assert r.status_code == 503 and r.json()["error"]["code"] == "all_targets_unavailable"
    assert int(r.headers["retry-after"]) > 20
    assert len(fake_openai.requests) == calls  # b never called the failing upstream


# ---- Redis goes away and comes back ------------------------------------------------------

@pytest.fixture
def own_redis():
    with RedisServer() as server:
        yield server


def test_redis_outage_fail_open_then_recovery(serve, fake_openai, own_redis, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="shipyard.shared")
    server = serve(config(fake_openai, own_redis.url, prefix(), f"sqlite:///{tmp_path}/s.db",
                          redis={"on_error": "fail_open"}))
    key, _ = new_key(server, rpm=2)
    assert [chat(server, key).status_code for _ in range(3)] == [200, 200, 429]
    own_redis.stop()
    t0 = time.monotonic()
    codes = [chat(server, key).status_code for _ in range(5)]
    assert codes == [200] * 5  # fail open: admitted without the shared limit
    assert time.monotonic() - t0 < 5  # and without waiting on Redis each time
    assert any("unreachable" in r.getMessage() and "fail_open" in r.getMessage() for r in caplog.records)
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 200 and ready.json()["access"]["redis"]["ok"] is False
    metrics = httpx.get(server.url + "/metrics").text
    assert 'shipyard_dependency_up{dependency="redis"} 0.0' in metrics
    assert 'shipyard_access_decisions_total{decision="degraded_open"} 5.0' in metrics
    own_redis.start()  # same port, empty (no persistence)
    assert wait_for(lambda: httpx.get(server.url + "/ready").json()["access"]["redis"]["ok"], timeout=10)
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    n_logs = len(caplog.records)
    # enforced again from the very first request: a pooled connection left stale by the restart
    # is retried once on a fresh one, never admitted unchecked (no more degraded_open decisions)
    codes = [chat(server, key).status_code for _ in range(3)]
    assert codes == [200, 200, 429], codes
    metrics = httpx.get(server.url + "/metrics").text
    assert 'shipyard_access_decisions_total{decision="degraded_open"} 5.0' in metrics
    assert not any("unreachable" in r.getMessage() for r in caplog.records[n_logs:]), \
        [r.getMessage() for r in caplog.records[n_logs:]]
    assert 'shipyard_dependency_up{dependency="redis"} 1.0' in httpx.get(server.url + "/metrics").text


def test_redis_outage_fail_closed_then_recovery(serve, fake_openai, own_redis, tmp_path):
    server = serve(config(fake_openai, own_redis.url, prefix(), f"sqlite:///{tmp_path}/s.db",
                          redis={"on_error": "fail_closed"}))
    key, _ = new_key(server, rpm=100)
    assert chat(server, key).status_code == 200
    own_redis.stop()
    r = chat(server, key)
    assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
    assert r.headers["retry-after"] == "1" and "fail_closed" in r.json()["error"]["message"]
    assert chat(server, ADMIN).status_code == 200  # the admin key has no limits to check
    assert wait_for(lambda: httpx.get(server.url + "/ready").status_code == 503, timeout=5)
    own_redis.start()
    assert wait_for(lambda: httpx.get(server.url + "/ready").status_code == 200, timeout=10)
    assert chat(server, key).status_code == 200
