"""Two real `shipyard serve` processes sharing one Redis and one PostgreSQL (both real
servers on loopback, started by the suite) behave as one gateway: one budget and one rate
limit enforced exactly under concurrent load split across them, one response cache, and
one trace store that both record into."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest

from fakes import FakeOpenAI, Fault
from services import drop_postgres_database, new_postgres_database
from test_replicas import ADMIN, MODEL, MSG, Replica

N = 5  # calls the budget and the rate limit allow


@pytest.fixture(scope="module")
def upstream():
    with FakeOpenAI() as up:
        yield up


@pytest.fixture
def fake_openai(upstream):
    upstream.clear()
    yield upstream
    upstream.clear()


@pytest.fixture(scope="module")
def cluster(upstream, postgres_url, redis_url, tmp_path_factory):
    """Two replicas, same config: PostgreSQL for keys and traces, Redis for limits, budgets,
    breakers and the cache (started once for this module; each test uses its own keys)."""
    fake_openai = upstream
    tmp_path = tmp_path_factory.mktemp("replicas")
    db = new_postgres_database(postgres_url, "replicas")
    config = {
        "store": db,
        "providers": {"p": {"type": "openai", "base_url": fake_openai.base_url, "api_key": "sk-upstream"}},
        "models": {"chat": {"targets": [{"provider": "p", "model": MODEL}], "retries": 0}},
        # output tokens at $1000/M: the fake's 10 output tokens cost exactly $0.01, and a call
        # with max_tokens=10 is estimated at exactly that (input is free)
        "prices": {MODEL: {"input": 0.0, "output": 1000.0}},
        "recording": {"flush_interval_s": 0.05},
        "auth": {"admin_key": "${SHIPYARD_ADMIN_KEY}"},
        "redis": {"url": redis_url, "key_prefix": "e2e" + uuid.uuid4().hex[:8]},
        "cache": {"enabled": True, "backend": "redis"},
    }
    fake_openai.usage = (12, 10)
    nodes = []
    try:
        for name in ("a", "b"):
            nodes.append(Replica(config, tmp_path, name=name).start())
        yield db, nodes
    finally:
        for r in nodes:
            r.stop()
        drop_postgres_database(db)


def create_key(replica: Replica, **fields) -> str:
    r = httpx.post(replica.url + "/api/keys", json=fields, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def fire(nodes: list[Replica], key: str, count: int, **body) -> list[tuple[str, httpx.Response]]:
    """``count`` concurrent calls, alternating between the replicas."""
    out: list = [None] * count
    barrier = threading.Barrier(count)

    def one(i: int) -> None:
        node = nodes[i % len(nodes)]
        with httpx.Client(timeout=60) as c:
            barrier.wait()
            out[i] = (node.name, c.post(node.base_url + "/chat/completions", headers={"authorization": f"Bearer {key}"},
                                        json={"model": "chat", "messages": MSG, **body}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_one_budget_across_two_replicas_no_overspend(cluster, fake_openai):
    _, nodes = cluster
    key = create_key(nodes[0], name="shared-budget", usd_per_day=0.01 * N)
    fake_openai.fail_next(Fault("delay", seconds=0.3), times=3 * N)  # calls overlap in time
    results = fire(nodes, key, 3 * N, max_tokens=10, temperature=0.7)
    ok = [r for _, r in results if r.status_code == 200]
    refused = [r for _, r in results if r.status_code != 200]
    assert len(ok) == N, [r.text for r in refused][:3]
    assert len(refused) == 2 * N and {r.status_code for r in refused} == {429}
    for r in refused:
        err = r.json()["error"]
        assert err["code"] == "budget_exceeded" and "usd_per_day" in err["message"]
        assert "resets at" in err["message"] and err["shipyard"]["resets_at"].endswith("T00:00:00Z")
        assert int(r.headers["retry-after"]) >= 1
    # and after the dust settles, the spend is exactly the budget, nothing reserved
    time.sleep(0.5)
    usage = httpx.get(nodes[1].url + f"/api/keys/{key[:14]}", headers={"authorization": f"Bearer {ADMIN}"}).json()
    (scope,) = usage["usage"].values()
    assert scope["usd_per_day"]["spent_usd"] == pytest.approx(0.01 * N)
    assert scope["usd_per_day"]["reserved_usd"] == 0
    late = fire(nodes, key, 2, max_tokens=10)
    assert all(r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded" for _, r in late)


def test_one_rate_limit_across_two_replicas(cluster, fake_openai):
    _, nodes = cluster
    key = create_key(nodes[1], name="shared-rpm", rpm=N)
    results = fire(nodes, key, 3 * N, temperature=0.7)
    codes = sorted(r.status_code for _, r in results)
    assert codes == [200] * N + [429] * (2 * N)
    for _, r in results:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert f"{N} requests per minute" in r.json()["error"]["message"]
            assert 1 <= int(r.headers["retry-after"]) <= 60 // N


def test_both_replicas_record_into_one_postgres(cluster, fake_openai):
    from shipyard.store import open_store

    db, nodes = cluster
    key = create_key(nodes[0], name="tracer")
    trace_ids = {}
    for node in nodes:
        for i in range(3):
            r = httpx.post(node.base_url + "/chat/completions", headers={"authorization": f"Bearer {key}"},
                           json={"model": "chat", "messages": [{"role": "user", "content": f"{node.name} {i}"}]},
                           timeout=30)
            assert r.status_code == 200
            trace_ids[r.headers["x-shipyard-trace-id"]] = node.name
    store = open_store(db)
    try:
        deadline = time.monotonic() + 15
        missing = set(trace_ids)
        while missing and time.monotonic() < deadline:
            missing = {t for t in missing if store.get_trace(t) is None}
            time.sleep(0.1)
        assert not missing
        for t in trace_ids:
            span = store.get_trace(t)["spans"][0]
            assert span["attributes"]["key_id"].startswith("key_")
    finally:
        store.close()
    assert set(trace_ids.values()) == {"a", "b"}


def test_the_cache_is_shared(cluster, fake_openai):
    _, nodes = cluster
    key = create_key(nodes[0], name="cacher")
    body = {"model": "chat", "temperature": 0, "messages": [{"role": "user", "content": f"cache me {uuid.uuid4()}"}]}
    h = {"authorization": f"Bearer {key}"}
    first = httpx.post(nodes[0].base_url + "/chat/completions", json=body, headers=h, timeout=30)
    assert first.status_code == 200 and first.headers.get("x-shipyard-cache") == "miss"
    deadline = time.monotonic() + 10
    while True:  # the entry is written beside the request
        second = httpx.post(nodes[1].base_url + "/chat/completions", json=body, headers=h, timeout=30)
        if second.headers.get("x-shipyard-cache") == "hit" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert second.status_code == 200 and second.headers.get("x-shipyard-cache") == "hit"
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
