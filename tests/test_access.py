"""Access control on one replica: the admin key, virtual keys (admin API and CLI), roles on
/api and /ui, and rate limits and budgets in memory. Real server, real SQLite store, the
official openai SDK as the client, a fake OpenAI upstream."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
import time

import httpx
import openai
import pytest

from conftest import fast_alias
from fakes import Fault

ADMIN = "admin-key-for-tests-0123456789"
MODEL = "gpt-4o-mini-2024-07-18"
MSG = [{"role": "user", "content": "Say hello"}]
# output tokens cost $1000 per million = $0.001 each, input is free: a call with max_tokens=10
# is estimated at exactly $0.01, and the fake's usage of 10 output tokens costs exactly that
PRICES = {MODEL: {"input": 0.0, "output": 1000.0}}


def config(up, **extra):
    cfg = {
        "providers": {"p": {"type": "openai", "base_url": up.base_url, "api_key": "sk-upstream"}},
        "models": {"chat": fast_alias({"provider": "p", "model": MODEL}),
                   "other": fast_alias({"provider": "p", "model": MODEL})},
        "prices": PRICES,
        "auth": {"admin_key": ADMIN},
    }
    cfg.update(extra)
    return cfg


def admin(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)


def new_key(server, **fields) -> str:
    r = admin(server).post("/api/keys", json=fields)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def sdk(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)


def chat(server, key: str | None, **kw) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": "chat", "messages": MSG, **kw}
    return httpx.post(server.base_url + "/chat/completions", json=body, headers=headers, timeout=30)


# ---- without an auth block nothing changes ---------------------------------------------------

def test_without_auth_the_server_stays_open(serve, fake_openai):
    cfg = config(fake_openai)
    del cfg["auth"]
    server = serve(cfg)
    assert chat(server, None).status_code == 200
    assert httpx.get(server.url + "/api/traces").status_code == 200
    r = httpx.post(server.url + "/api/keys", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "auth_not_configured"


# ---- 401 / 403 ------------------------------------------------------------------------------

def test_missing_unknown_and_admin_keys(serve, fake_openai):
    server = serve(config(fake_openai))
    r = chat(server, None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as e:
        sdk(server, "sk-sy-not-a-real-key-000000000000000000000000").chat.completions.create(model="chat", messages=MSG)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    assert "Incorrect API key" in e.value.message and "000000000000000000000000" not in e.value.message
    # the admin key calls anything, unlimited
    assert sdk(server, ADMIN).chat.completions.create(model="chat", messages=MSG).choices[0].message.content
    # probes stay open
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/ready").status_code == 200
    assert "shipyard_access_decisions_total" in httpx.get(server.url + "/metrics").text


def test_key_is_shown_once_stored_hashed_and_listed_by_prefix(serve, fake_openai, tmp_path):
    server = serve(config(fake_openai))
    r = admin(server).post("/api/keys", json={"name": "ci", "user": "u-1", "team": "red", "aliases": ["chat"]})
    assert r.status_code == 201
    created = r.json()
    key = created["key"]
    assert key.startswith("sk-sy-") and len(key) >= 40
    assert created["prefixes"] == [key[:14]] and created["user"] == "u-1"
    listed = admin(server).get("/api/keys").json()["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert key not in json.dumps(listed) and "key" not in listed[0]
    # only the sha256 is in the database
    db = server.engine.store.path
    rows = sqlite3.connect(db).execute("SELECT key_hash, prefix FROM access_key_secrets").fetchall()
    assert rows == [(hashlib.sha256(key.encode()).hexdigest(), key[:14])]
    dump = b"".join(open(db, "rb").read() for _ in [0])
    assert key.encode() not in dump
    # the key works, and its traces name the key, team and user
    resp = sdk(server, key).chat.completions.with_raw_response.create(model="chat", messages=MSG)
    server.flush()
    trace = server.engine.store.get_trace(resp.headers["x-shipyard-trace-id"])
    span = trace["spans"][0]
    assert span["attributes"]["key_id"] == created["id"] and span["attributes"]["team"] == "red"
    assert span["user_id"] == "u-1"
    assert key not in json.dumps(trace)


def test_alias_not_allowed_is_403(serve, fake_openai):
    server = serve(config(fake_openai))
    key = new_key(server, aliases=["chat"])
    assert chat(server, key).status_code == 200
    with pytest.raises(openai.PermissionDeniedError) as e:
        sdk(server, key).chat.completions.create(model="other", messages=MSG)
    assert e.value.code == "model_not_allowed" and "'other'" in e.value.message and "chat" in e.value.message


def test_alias_patterns(serve, fake_openai):
    server = serve(config(fake_openai))
    key = new_key(server, aliases=["ch*"])
    assert chat(server, key).status_code == 200
    r = httpx.post(server.base_url + "/chat/completions", json={"model": "other", "messages": MSG},
                   headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 403


def test_revoke_is_immediate_on_this_replica(serve, fake_openai):
    server = serve(config(fake_openai, auth={"admin_key": ADMIN, "cache_ttl_s": 3600}))
    r = admin(server).post("/api/keys", json={"name": "gone"})
    key, kid = r.json()["key"], r.json()["id"]
    assert chat(server, key).status_code == 200  # cached now
    assert admin(server).post(f"/api/keys/{kid}/revoke").json()["status"] == "revoked"
    r = chat(server, key)
    assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key"
    assert "revoked" in r.json()["error"]["message"]
    assert admin(server).get("/api/keys").json()["data"] == []
    assert len(admin(server).get("/api/keys?include_revoked=true").json()["data"]) == 1


def test_rotate_with_and_without_grace(serve, fake_openai):
    server = serve(config(fake_openai))
    r = admin(server).post("/api/keys", json={"name": "rot", "rpm": 100})
    old, kid = r.json()["key"], r.json()["id"]
    r = admin(server).post(f"/api/keys/{kid}/rotate", json={"grace_s": 3600})
    assert r.status_code == 201
    new = r.json()["key"]
    assert r.json()["id"] == kid and new != old and len(r.json()["prefixes"]) == 2
    assert chat(server, old).status_code == 200 and chat(server, new).status_code == 200
    r = admin(server).post(f"/api/keys/{kid}/rotate")  # no grace: both earlier secrets stop now
    newest = r.json()["key"]
    assert chat(server, newest).status_code == 200
    for stale in (old, new):
        r = chat(server, stale)
        assert r.status_code == 401 and r.json()["error"]["code"] == "rotated_api_key", r.text


def test_expired_key(serve, fake_openai):
    server = serve(config(fake_openai, auth={"admin_key": ADMIN, "cache_ttl_s": 0.1}))
    key = new_key(server, expires_in_s=0.5)
    assert chat(server, key).status_code == 200
    time.sleep(0.7)
    r = chat(server, key)
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"


def test_admin_api_validation_and_patch(serve, fake_openai):
    server = serve(config(fake_openai))
    a = admin(server)
    r = a.post("/api/keys", json={"rpm": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rpm"
    r = a.post("/api/keys", json={"roles": ["root"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "roles"
    r = a.post("/api/keys", json={"colour": "blue"})
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"]
    r = a.post("/api/keys", json={"name": "p", "rpm": 1})
    key, kid = r.json()["key"], r.json()["id"]
    assert chat(server, key).status_code == 200
    assert chat(server, key).status_code == 429
    r = a.patch(f"/api/keys/{kid}", json={"rpm": None})
    assert r.status_code == 200 and r.json()["rpm"] is None
    assert chat(server, key).status_code == 200
    assert a.get("/api/keys/key_doesnotexist").status_code == 404
    assert a.get(f"/api/keys/{key[:14]}").json()["id"] == kid


# ---- roles on /api and /ui ----------------------------------------------------------------

def test_api_and_ui_need_viewer_or_admin(serve, fake_openai):
    server = serve(config(fake_openai))
    plain = new_key(server)
    viewer = new_key(server, roles=["viewer"])
    boss = new_key(server, roles=["admin"])
    get = lambda path, key=None, **kw: httpx.get(server.url + path, timeout=30, headers=(
        {"authorization": f"Bearer {key}"} if key else {}), **kw)
    r = get("/api/traces")
    assert r.status_code == 401
    r = get("/api/traces", plain)
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied" and "viewer" in r.json()["error"]["message"]
    assert get("/api/traces", viewer).status_code == 200
    assert get("/api/traces", boss).status_code == 200
    assert get("/api/traces", ADMIN).status_code == 200
    assert get("/api/keys", viewer).status_code == 403
    assert get("/api/keys", boss).status_code == 200
    # writes need admin
    body = {"name": "greet", "model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(server.url + "/api/prompts", json=body, headers={"authorization": f"Bearer {viewer}"})
    assert r.status_code == 403
    # /ui: a browser is asked for Basic credentials; the key is the password
    r = get("/ui")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    basic = "Basic " + base64.b64encode(f"me:{viewer}".encode()).decode()
    r = httpx.get(server.url + "/ui", headers={"authorization": basic}, follow_redirects=True)
    assert r.status_code == 200 and "<html" in r.text.lower()
    r = httpx.get(server.url + "/api/traces", headers={"authorization": basic})
    assert r.status_code == 200
    # ... but never for writes (a browser would send it cross-site)
    basic_admin = "Basic " + base64.b64encode(f"me:{boss}".encode()).decode()
    r = httpx.post(server.url + "/api/keys", json={}, headers={"authorization": basic_admin})
    assert r.status_code == 401


def test_reviewer_role_labels_the_review_queue_but_changes_nothing_else(serve, fake_openai):
    server = serve(config(fake_openai))
    viewer = new_key(server, roles=["viewer"])
    reviewer = new_key(server, roles=["reviewer"])
    r = chat(server, new_key(server))
    assert r.status_code == 200
    tid = r.headers["x-shipyard-trace-id"]
    bearer = lambda key: {"authorization": f"Bearer {key}"}
    label = {"trace_id": tid, "verdict": "fail", "tags": ["tone"], "reviewer": "rita"}
    deadline = time.time() + 10
    while True:  # the recorder writes the trace a moment after the response
        r = httpx.post(server.url + "/api/review/labels", json=label, headers=bearer(reviewer), timeout=30)
        if r.status_code != 404 or time.time() > deadline:
            break
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    # a viewer may read the labels but not write them; a reviewer reads too (reviewer implies viewer)
    r = httpx.post(server.url + "/api/review/labels", json=label, headers=bearer(viewer), timeout=30)
    assert r.status_code == 403 and "reviewer" in r.json()["error"]["message"]
    for key in (viewer, reviewer):
        r = httpx.get(server.url + "/api/review/labels", params={"trace_id": tid}, headers=bearer(key), timeout=30)
        assert r.status_code == 200 and r.json()["data"][0]["label"] == "fail"
    assert httpx.get(server.url + "/api/traces", headers=bearer(reviewer), timeout=30).status_code == 200
    # nothing else: prompts and keys stay admin-only
    body = {"name": "greet", "model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(server.url + "/api/prompts", json=body, headers=bearer(reviewer), timeout=30).status_code == 403
    assert httpx.get(server.url + "/api/keys", headers=bearer(reviewer), timeout=30).status_code == 403
    # from the browser (Basic): accepted from the server's own page, refused from another site or unknown
    basic = {"authorization": "Basic " + base64.b64encode(f"me:{reviewer}".encode()).decode()}
    host = server.url.split("://", 1)[1]
    ok = httpx.post(server.url + "/api/review/labels", json={**label, "verdict": "pass"}, timeout=30,
                    headers={**basic, "origin": server.url, "sec-fetch-site": "same-origin"})
    assert ok.status_code == 200, ok.text
    for extra in ({"origin": "https://evil.example", "sec-fetch-site": "cross-site"}, {},
                  {"origin": server.url, "sec-fetch-site": "cross-site"},  # the browser's word decides
                  {"origin": server.url.replace("http://", "https://")}):  # another scheme is another site
        r = httpx.post(server.url + "/api/review/labels", json=label, headers={**basic, **extra}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site", (extra, r.text)
    r = httpx.get(server.url + "/api/review/labels", params={"trace_id": tid}, headers=bearer(reviewer), timeout=30)
    assert r.json()["data"][0]["label"] == "pass"  # the refused requests changed nothing
    # Basic still never writes outside the review queue, even for an admin
    boss = new_key(server, roles=["admin"])
    basic_boss = {"authorization": "Basic " + base64.b64encode(f"me:{boss}".encode()).decode(),
                  "origin": server.url, "host": host}
    assert httpx.post(server.url + "/api/prompts", json=body, headers=basic_boss, timeout=30).status_code == 401


def test_require_role_helper(serve, fake_openai):
    from starlette.requests import Request

    from shipyard.access import require_role
    from shipyard.errors import GatewayError

    server = serve(config(fake_openai))
    access = server.app.state.access

    def request(principal):
        scope = {"type": "http", "app": server.app, "headers": [], "state": {}}
        if principal is not None:
            scope["state"]["principal"] = principal
        return Request(scope)

    from shipyard.access.keys import KeyRecord

    with pytest.raises(GatewayError) as e:
        require_role(request(None), "viewer")
    assert e.value.status == 401
    with pytest.raises(GatewayError) as e:
        require_role(request(KeyRecord("key_x")), "viewer")
    assert e.value.status == 403
    assert require_role(request(KeyRecord("key_v", roles=frozenset({"viewer"}))), "viewer").key_id == "key_v"
    assert require_role(request(KeyRecord("key_a", roles=frozenset({"admin"}))), "viewer").key_id == "key_a"
    assert access.auth_on


# ---- rate limits and budgets (in memory) ---------------------------------------------------

def test_rpm_limit_429_with_retry_after(serve, fake_openai):
    server = serve(config(fake_openai))
    key = new_key(server, name="bot", rpm=3)
    assert [chat(server, key).status_code for _ in range(3)] == [200, 200, 200]
    r = chat(server, key)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and "3 requests per minute" in err["message"] and "'bot'" in err["message"]
    assert 15 <= int(r.headers["retry-after"]) <= 20  # one request back every 20 s
    with pytest.raises(openai.RateLimitError):
        sdk(server, key).chat.completions.create(model="chat", messages=MSG)


def test_tpm_limit_counts_the_estimate_then_the_real_tokens(serve, fake_openai):
    fake_openai.usage = (10, 10)
    server = serve(config(fake_openai))
    key = new_key(server, tpm=1000)
    # estimated 600+ tokens (max_tokens=600): one fits, a second concurrent one would not
    assert chat(server, key, max_tokens=600).status_code == 200
    # settled with the real 20 tokens: there is room again
    time.sleep(0.2)
    assert chat(server, key, max_tokens=600).status_code == 200
    time.sleep(0.2)
    r = chat(server, key, max_tokens=990)
    assert r.status_code == 429 and "tokens per minute" in r.json()["error"]["message"]


def test_budget_allows_exactly_n_calls_then_429_naming_budget_and_reset(serve, fake_openai):
    fake_openai.usage = (7, 10)  # 10 output tokens = $0.01, input free
    server = serve(config(fake_openai))
    key = new_key(server, name="team-bot", usd_per_day=0.05)
    codes = [chat(server, key, max_tokens=10).status_code for _ in range(5)]
    assert codes == [200] * 5
    time.sleep(0.2)
    r = chat(server, key, max_tokens=10)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "budget_exceeded" and err["type"] == "insufficient_quota"
    assert "usd_per_day" in err["message"] and "'team-bot'" in err["message"] and "resets at" in err["message"]
    tomorrow = (int(time.time()) // 86400 + 1) * 86400
    assert err["shipyard"]["resets_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tomorrow))
    assert abs(int(r.headers["retry-after"]) - (tomorrow - time.time())) < 5
    usage = admin(server).get(f"/api/keys/{key[:14]}").json()["usage"]
    (scope,) = usage.values()
    assert scope["usd_per_day"]["spent_usd"] == pytest.approx(0.05)
    assert scope["usd_per_day"]["reserved_usd"] == 0


def test_budget_holds_under_concurrency(serve, fake_openai):
    fake_openai.usage = (7, 10)
    fake_openai.fail_next(Fault("delay", seconds=0.3), times=40)  # calls overlap
    server = serve(config(fake_openai))
    n = 4
    key = new_key(server, usd_per_day=0.01 * n)
    results: list[int] = []
    lock = threading.Lock()

    def one():
        code = chat(server, key, max_tokens=10).status_code
        with lock:
            results.append(code)

    threads = [threading.Thread(target=one) for _ in range(3 * n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * n + [429] * (2 * n)


def test_streamed_calls_are_settled_when_the_stream_ends(serve, fake_openai):
    fake_openai.usage = (7, 10)
    server = serve(config(fake_openai))
    key = new_key(server, usd_per_day=0.02)
    client = sdk(server, key)
    for _ in range(2):
        chunks = list(client.chat.completions.create(model="chat", messages=MSG, max_tokens=10, stream=True))
        assert chunks
    time.sleep(0.2)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="chat", messages=MSG, max_tokens=10, stream=True)
    assert e.value.code == "budget_exceeded"


def test_failed_upstream_calls_release_their_reservation(serve, fake_openai):
    server = serve(config(fake_openai, models={"chat": fast_alias({"provider": "p", "model": MODEL}, retries=0)}))
    key = new_key(server, usd_per_day=0.01)
    fake_openai.fail_next(Fault("status", status=500))
    assert chat(server, key, max_tokens=10).status_code == 502
    time.sleep(0.2)
    fake_openai.usage = (7, 10)
    assert chat(server, key, max_tokens=10).status_code == 200


def test_team_limits_are_shared_by_the_team_keys(serve, fake_openai):
    server = serve(config(fake_openai, limits={"teams": {"red": {"rpm": 2}}}))
    k1, k2 = new_key(server, team="red"), new_key(server, team="red")
    other = new_key(server, team="blue")
    assert chat(server, k1).status_code == 200 and chat(server, k2).status_code == 200
    r = chat(server, k1)
    assert r.status_code == 429 and "team 'red'" in r.json()["error"]["message"]
    assert chat(server, other).status_code == 200


def test_embeddings_are_checked_too(serve, fake_openai):
    server = serve(config(fake_openai))
    key = new_key(server, aliases=["other"], rpm=1)
    r = httpx.post(server.base_url + "/embeddings", json={"model": "chat", "input": "x"},
                   headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 403


def test_unknown_price_reserves_nothing_but_an_exhausted_budget_still_refuses(serve, fake_openai):
    fake_openai.usage = (7, 10)
    cfg = config(fake_openai)
    server = serve({**cfg, "prices": {}})
    key = new_key(server, usd_per_day=0.0)
    r = chat(server, key)
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"


# ---- the CLI -------------------------------------------------------------------------------

def test_cli_create_list_rotate_revoke(tmp_path, capsys, serve, fake_openai):
    from shipyard.cli import main

    db = f"sqlite:///{tmp_path}/keys.db"
    assert main(["keys", "create", "--store", db, "--name", "cli-key", "--alias", "chat", "--rpm", "5",
                 "--usd-per-day", "2.5", "--role", "viewer", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    key, kid = created["key"], created["id"]
    assert created["aliases"] == ["chat"] and created["rpm"] == 5 and created["usd_per_day"] == 2.5
    assert main(["keys", "list", "--store", db]) == 0
    out = capsys.readouterr().out
    assert kid in out and key[:14] in out and key not in out and "rpm=5" in out
    assert main(["keys", "show", "--store", db, key[:14], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == kid
    assert main(["keys", "update", "--store", db, kid, "--no-rpm", "--tpm", "1000", "--json"]) == 0
    upd = json.loads(capsys.readouterr().out)
    assert upd["rpm"] is None and upd["tpm"] == 1000
    assert main(["keys", "rotate", "--store", db, kid, "--grace", "1h", "--json"]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["key"] != key and len(rotated["prefixes"]) == 2
    # the server (same store) accepts the rotated key; a revoked one is refused
    server = serve({**config(fake_openai), "store": db})
    assert chat(server, rotated["key"]).status_code == 200
    assert main(["keys", "revoke", "--store", db, kid]) == 0
    assert "revoked" in capsys.readouterr().out
    server.app.state.access.auth.invalidate()  # another process revoked it: no cache TTL wait here
    assert chat(server, rotated["key"]).status_code == 401
    assert main(["keys", "show", "--store", db, "key_nope"]) == 2


# ---- the in-memory limiter and the pluggable breaker, directly -------------------------------

async def test_memory_limiter_matches_the_redis_semantics():
    from shipyard.access.limits import Rate, Scope, windows_for
    from shipyard.access.memory import MemoryLimiter

    now = [1_000_000.0]
    lim = MemoryLimiter(clock=lambda: now[0])
    s = Scope("key:m", "m", rpm=5, usd_per_day=1.0)
    rpm = Rate(s, "rpm", 5, 1)
    got = [await lim.admit([rpm], [], str(i), 60) for i in range(7)]
    assert [g[0] for g in got] == [1] * 5 + [0, 0] and got[5][2] == 12_000
    now[0] += 12.0
    assert (await lim.admit([rpm], [], "x", 60))[0] == 1
    win = windows_for(s, 600_000_000, now[0])  # $0.60: one fits
    assert (await lim.admit([], win, "a", 10))[0] == 1
    assert (await lim.admit([], win, "b", 10))[:2] == (2, 0)
    now[0] += 11  # "a" was never settled: released after its TTL
    assert (await lim.admit([], win, "c", 10))[0] == 1
    await lim.settle([], [(win[0], 100_000_000)], "c")
    assert await lim.usage(win) == [(100_000_000, 0)]


def test_breaker_transitions_are_pluggable():
    from shipyard.routing.breaker import CLOSED, OPEN, CircuitBreaker

    t = [0.0]
    seen = []
    b = CircuitBreaker(2, 30.0, clock=lambda: t[0], on_change=lambda br, st: seen.append(st))
    b.failure()
    b.failure()
    assert b.state == OPEN and seen == [OPEN]
    b.success()
    assert b.state == CLOSED and seen == [OPEN, CLOSED]
    other = CircuitBreaker(2, 30.0, clock=lambda: t[0])
    other.apply_remote(OPEN, 10.0)
    assert other.state == OPEN and not other.allow() and 9.9 < other.retry_in() <= 10.0
    t[0] += 10.1
    assert other.allow()  # the probe after the remaining cool-down
    other.apply_remote(CLOSED)
    assert other.state == CLOSED
    plain = CircuitBreaker()
    assert plain.on_change is None  # the in-memory default: nothing else happens
