"""The JSON read API (/api/traces, /api/traces/{id}, /api/dashboard) against a real server.

`populate` (also used by test_ui.py) makes real calls through the gateway with the openai
SDK (ok, big, streamed, tool call, multimodal, <script> payload, slow, failing) plus one
nested trace (chain -> guard, retrieval, llm) so both the API and the UI have data to show.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest
from conftest import client_for, fast_alias
from fakes import Fault

PRICES = {
    "gpt-4o-mini-2024-07-18": {"input": 0.15, "output": 0.60},
    "gpt-4o-2024-08-06": {"input": 2.5, "output": 10.0},
}
XSS_PROMPT = "<script>window.__xss = 1</script> please reply"
XSS_REPLY = "<img src=x onerror=\"window.__xss = 2\"> and </pre><script>window.__xss = 3</script>"
PIXEL_PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def gateway_config(up: Any) -> dict[str, Any]:
    return {
        "providers": {"fake": {"type": "openai", "base_url": up.base_url, "api_key": "sk-test-ui"}},
        "models": {
            "chat": fast_alias({"provider": "fake", "model": "gpt-4o-mini-2024-07-18"}, retries=1),
            "smart": fast_alias({"provider": "fake", "model": "gpt-4o-2024-08-06"}, retries=0),
        },
        "prices": PRICES,
    }


def _call(client: openai.OpenAI, **kw: Any) -> str:
    raw = client.chat.completions.with_raw_response.create(**kw)
    raw.parse()
    return raw.headers["x-shipyard-trace-id"]


def populate(server: Any, up: Any) -> dict[str, str]:
    """Make the calls; return {name: trace_id}. Everything is flushed to the store."""
    from shipyard.tracing.span import Span, new_span_id, new_trace_id

    client = client_for(server)
    ids: dict[str, str] = {}
    up.usage = (11, 7)
    ids["ok"] = _call(client, model="chat", messages=[{"role": "user", "content": "Say hello"}],
                      user="alice", extra_body={"metadata": {"session_id": "sess-1"}})
    up.usage = (100_000, 50_000)  # $0.25 + $0.50 at gpt-4o prices
    ids["big"] = _call(client, model="smart", messages=[{"role": "user", "content": "Write an essay"}], user="bob")
    up.usage = (11, 7)
    up.reply_text = "one two three four"
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Count"}],
                                            stream=True, user="alice")
    with stream:
        ids["stream"] = stream.response.headers["x-shipyard-trace-id"]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "one two three four"
    up.reply_tool_calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    ids["tool"] = _call(client, model="chat", tools=tools, user="carol", messages=[
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": [{"type": "text", "text": "Weather where this photo was taken?"},
                                     {"type": "image_url", "image_url": {"url": PIXEL_PNG}}]},
    ])
    up.reply_tool_calls = None
    up.reply_text = XSS_REPLY
    ids["xss"] = _call(client, model="chat", messages=[{"role": "user", "content": XSS_PROMPT}], user="mallory")
    up.reply_text = "slow but fine"
    up.fail_next(Fault("delay", seconds=0.4))
    ids["slow"] = _call(client, model="chat", messages=[{"role": "user", "content": "Take your time"}], user="dave")
    up.fail_next(Fault("status", status=503), times=2)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "This will fail"}],
                                       user="erin")
    ids["error"] = exc.value.response.headers["x-shipyard-trace-id"]

    # a nested trace: chain -> guard, retrieval, llm (the llm call joins via traceparent)
    trace_id, root_id = new_trace_id(), new_span_id()
    t0 = time.time()
    up.reply_text = "Paris is sunny."
    _call(client, model="chat", messages=[{"role": "user", "content": "Weather in Paris?"}], user="frank",
          extra_headers={"traceparent": f"00-{trace_id}-{root_id}-01"})
    t1 = time.time()
    rec = server.engine.recorder
    rec.record(Span(trace_id=trace_id, span_id=root_id, name="answer question", kind="chain",
                    start_time=t0 - 0.05, end_time=t1 + 0.02, user_id="frank",
                    input={"question": "Weather in Paris? my email is a@b.example"},
                    output={"answer": "Paris is sunny."},
                    attributes={"prompt": {"name": "weather-answer", "version": 3, "label": "production"}}))
    rec.record(Span(trace_id=trace_id, span_id=new_span_id(), parent_id=root_id, name="pii input guard",
                    kind="guard", start_time=t0 - 0.04, end_time=t0 - 0.03,
                    attributes={"guard_decisions": [
                        {"guard": "pii", "stage": "input", "action": "redact", "reason": "email address found"},
                        {"guard": "topics", "stage": "input", "action": "pass"}]}))
    rec.record(Span(trace_id=trace_id, span_id=new_span_id(), parent_id=root_id, name="search docs",
                    kind="retrieval", start_time=t0 - 0.03, end_time=t0 - 0.01,
                    attributes={"retrieved_document_ids": ["doc-17", "doc-42"]},
                    output=[{"id": "doc-17", "score": 0.91}, {"id": "doc-42", "score": 0.77}]))
    ids["nested"] = trace_id
    server.flush()
    return ids


@pytest.fixture
def gateway(serve, fake_openai):
    server = serve(gateway_config(fake_openai))
    return server, populate(server, fake_openai)


def get(server: Any, path: str, **params: Any) -> httpx.Response:
    return httpx.get(server.url + path, params=params, timeout=30)


def trace_ids(resp: httpx.Response) -> set[str]:
    assert resp.status_code == 200, resp.text
    return {r["trace_id"] for r in resp.json()["data"]}


# ---- listing ---------------------------------------------------------------------------

def test_list_returns_every_recorded_trace_newest_first(gateway):
    server, ids = gateway
    resp = get(server, "/api/traces")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["next_cursor"] is None
    assert {r["trace_id"] for r in body["data"]} == set(ids.values())
    starts = [r["start_time"] for r in body["data"]]
    assert starts == sorted(starts, reverse=True)
    ok = next(r for r in body["data"] if r["trace_id"] == ids["ok"])
    assert ok["status"] == "ok" and ok["alias"] == "chat" and ok["model"] == "gpt-4o-mini-2024-07-18"
    assert ok["user_id"] == "alice" and ok["session_id"] == "sess-1"
    assert (ok["input_tokens"], ok["output_tokens"]) == (11, 7)
    assert ok["cost_usd"] == pytest.approx((11 * 0.15 + 7 * 0.60) / 1e6)
    assert ok["duration_ms"] > 0
    nested = next(r for r in body["data"] if r["trace_id"] == ids["nested"])
    assert nested["span_count"] == 4 and nested["name"] == "answer question"


def test_filters_by_alias_model_user_session_and_status(gateway):
    server, ids = gateway
    assert trace_ids(get(server, "/api/traces", status="error")) == {ids["error"]}
    assert ids["error"] not in trace_ids(get(server, "/api/traces", status="ok"))
    assert trace_ids(get(server, "/api/traces", alias="smart")) == {ids["big"]}
    assert trace_ids(get(server, "/api/traces", model="gpt-4o-2024-08-06")) == {ids["big"]}
    assert trace_ids(get(server, "/api/traces", user="alice")) == {ids["ok"], ids["stream"]}
    assert trace_ids(get(server, "/api/traces", session="sess-1")) == {ids["ok"]}
    assert trace_ids(get(server, "/api/traces", user="alice", status="error")) == set()
    # empty values (as an HTML form sends them) mean "not set"
    assert trace_ids(get(server, "/api/traces", alias="", status="", q="")) == set(ids.values())


def test_filters_by_cost_latency_and_free_text(gateway):
    server, ids = gateway
    assert trace_ids(get(server, "/api/traces", min_cost="0.01")) == {ids["big"]}
    cheap = trace_ids(get(server, "/api/traces", max_cost="0.001"))
    assert ids["ok"] in cheap and ids["big"] not in cheap
    assert ids["slow"] in trace_ids(get(server, "/api/traces", min_latency_ms="350"))
    assert ids["ok"] not in trace_ids(get(server, "/api/traces", min_latency_ms="350"))
    assert ids["slow"] not in trace_ids(get(server, "/api/traces", max_latency_ms="350"))
    assert trace_ids(get(server, "/api/traces", q="Write an essay")) == {ids["big"]}
    assert ids["xss"] in trace_ids(get(server, "/api/traces", q="window.__xss"))


def test_time_range_since_start_and_end(gateway):
    server, ids = gateway
    now = time.time()
    assert trace_ids(get(server, "/api/traces", since="1h")) == set(ids.values())
    assert trace_ids(get(server, "/api/traces", since=str(now - 3600))) == set(ids.values())
    assert trace_ids(get(server, "/api/traces", start=str(now + 60), end=str(now + 120))) == set()
    assert trace_ids(get(server, "/api/traces", start="1h", end=str(now - 1800))) == set()
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 3600))
    assert trace_ids(get(server, "/api/traces", start=iso)) == set(ids.values())


def test_default_window_is_seven_days_not_a_full_scan(gateway):
    server, _ = gateway
    from shipyard.tracing.span import Span, new_span_id, new_trace_id

    old_start = time.time() - 8 * 86400
    old = Span(trace_id=new_trace_id(), span_id=new_span_id(), name="old call", alias="chat",
               start_time=old_start, end_time=old_start + 0.1)
    server.engine.recorder.record(old)
    server.flush()
    assert old.trace_id not in trace_ids(get(server, "/api/traces"))
    assert old.trace_id in trace_ids(get(server, "/api/traces", since="30d"))
    assert get(server, f"/api/traces/{old.trace_id}").status_code == 200


def test_cursor_pagination_walks_every_trace_exactly_once(gateway):
    server, ids = gateway
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        body = get(server, "/api/traces", **params).json()
        assert len(body["data"]) <= 3
        seen += [r["trace_id"] for r in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert len(seen) == len(set(seen)) == len(ids)
    assert set(seen) == set(ids.values())
    assert pages == 3  # 8 traces: 3 + 3 + 2


# ---- one trace -------------------------------------------------------------------------

def test_get_trace_returns_all_spans_with_payloads(gateway):
    server, ids = gateway
    t = get(server, f"/api/traces/{ids['tool']}").json()
    assert t["trace_id"] == ids["tool"] and t["status"] == "ok"
    [span] = t["spans"]
    assert span["kind"] == "llm" and span["alias"] == "chat" and span["provider"] == "fake"
    assert span["input"]["messages"][1]["content"][1]["image_url"]["url"] == PIXEL_PNG
    call = span["output"]["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert span["attributes"]["attempts"][0]["outcome"] == "ok"

    nested = get(server, f"/api/traces/{ids['nested']}").json()
    kinds = sorted(s["kind"] for s in nested["spans"])
    assert kinds == ["chain", "guard", "llm", "retrieval"]
    root = next(s for s in nested["spans"] if s["kind"] == "chain")
    assert all(s["parent_id"] == root["span_id"] for s in nested["spans"] if s is not root)

    err = get(server, f"/api/traces/{ids['error']}").json()
    assert err["status"] == "error" and err["spans"][0]["error"]
    assert [a["outcome"] for a in err["spans"][0]["attributes"]["attempts"]] == ["http_503", "http_503"]


def test_unknown_trace_is_an_openai_style_404(gateway):
    server, _ = gateway
    resp = get(server, "/api/traces/0123456789abcdef0123456789abcdef")
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "trace_not_found"
    assert err["param"] == "trace_id" and "0123456789abcdef0123456789abcdef" in err["message"]


# ---- bad parameters --------------------------------------------------------------------

@pytest.mark.parametrize("params, param", [
    ({"limit": "abc"}, "limit"),
    ({"limit": "0"}, "limit"),
    ({"limit": "100000"}, "limit"),
    ({"status": "maybe"}, "status"),
    ({"since": "yesterday"}, "since"),
    ({"start": "soon"}, "start"),
    ({"end": "-5"}, "end"),
    ({"since": "1h", "start": "2h"}, "since"),
    ({"start": "1h", "end": "2h"}, "start"),  # empty range: start after end
    ({"min_cost": "cheap"}, "min_cost"),
    ({"max_cost": "-1"}, "max_cost"),
    ({"min_latency_ms": "nan"}, "min_latency_ms"),
    ({"max_latency_ms": "inf"}, "max_latency_ms"),
    ({"min_cost": "2", "max_cost": "1"}, "min_cost"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"usr": "alice"}, "usr"),
])
def test_bad_list_params_are_400_naming_the_param(serve, fake_openai, params, param):
    server = serve(gateway_config(fake_openai))
    resp = get(server, "/api/traces", **params)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert f"'{param}'" in err["message"]


@pytest.mark.parametrize("params, param", [
    ({"bucket": "0"}, "bucket"),
    ({"bucket": "often"}, "bucket"),
    ({"bucket": "1.5"}, "bucket"),
    ({"since": "30d", "bucket": "60"}, "bucket"),  # 43,200 points
    ({"since": "later"}, "since"),
    ({"limit": "5"}, "limit"),
])
def test_bad_dashboard_params_are_400_naming_the_param(serve, fake_openai, params, param):
    server = serve(gateway_config(fake_openai))
    resp = get(server, "/api/dashboard", **params)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and f"'{param}'" in err["message"]


# ---- dashboard -------------------------------------------------------------------------

def test_dashboard_buckets_llm_calls_by_model(gateway):
    server, _ = gateway
    resp = get(server, "/api/dashboard", since="7d", bucket="3600")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["bucket_s"] == 3600
    assert body["end"] - body["start"] == pytest.approx(7 * 86400 + 60, abs=5)
    assert set(body["models"]) >= {"gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"}
    rows = body["data"]
    for r in rows:
        assert set(r) >= {"bucket_start", "model", "requests", "errors", "p50_ms", "p95_ms", "cost_usd",
                          "input_tokens", "output_tokens"}
    mini = [r for r in rows if r["model"] == "gpt-4o-mini-2024-07-18"]
    big = [r for r in rows if r["model"] == "gpt-4o-2024-08-06"]
    # llm spans on gpt-4o-mini: ok, stream, tool, xss, slow, nested llm = 6 ok (+ the failed
    # call, whose model is the target's when every attempt failed)
    assert sum(r["requests"] for r in mini) >= 6
    assert sum(r["errors"] for r in rows) == 1
    assert sum(r["requests"] for r in big) == 1
    assert sum(r["cost_usd"] or 0 for r in big) == pytest.approx(0.75)
    assert sum(r["input_tokens"] or 0 for r in big) == 100_000
    assert all(r["p95_ms"] >= r["p50_ms"] for r in rows if r["p50_ms"] is not None)


def test_dashboard_picks_a_bucket_when_none_is_given(gateway):
    server, _ = gateway
    assert get(server, "/api/dashboard", since="24h").json()["bucket_s"] == 900
    assert get(server, "/api/dashboard", since="1h", bucket="5m").json()["bucket_s"] == 300
    assert get(server, "/api/dashboard").json()["bucket_s"] == 3600  # 7 days by default


# ---- plumbing --------------------------------------------------------------------------

def test_without_a_store_the_api_says_so(serve, fake_openai):
    server = serve({**gateway_config(fake_openai), "store": "none"})
    resp = get(server, "/api/traces")
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "store_disabled"


def test_store_queries_run_off_the_event_loop(serve, fake_openai):
    """A store call that blocks must not stall other requests (it runs in a worker thread)."""
    server = serve(gateway_config(fake_openai))
    entered, release = threading.Event(), threading.Event()
    real = server.engine.store

    class BlockingStore:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def list_traces(self, f: Any) -> Any:
            entered.set()
            release.wait(30)
            return real.list_traces(f)

    server.engine.store = BlockingStore()
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(resp=get(server, "/api/traces")))
    t.start()
    try:
        assert entered.wait(10)
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200  # loop is free
        assert not result  # ...while the listing is still waiting on the store
    finally:
        release.set()
        t.join(30)
        server.engine.store = real
    assert result["resp"].status_code == 200
