"""`shipyard serve` end to end: the official openai SDK as client, fake providers upstream."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

from conftest import client_for, fast_alias
from fakes import Fault

PRICES = {"gpt-4o-mini-2024-07-18": {"input": 0.15, "output": 0.60, "cached_input": 0.075}}
MSG = [{"role": "user", "content": "Say hello"}]


def one_upstream(up, **alias_kw):
    return {
        "providers": {"primary": {"type": "openai", "base_url": up.base_url, "api_key": "sk-test-secret-123"}},
        "models": {"chat": fast_alias({"provider": "primary", "model": "gpt-4o-mini-2024-07-18"}, **alias_kw)},
        "prices": PRICES,
    }


def two_upstreams(up1, up2, **alias_kw):
    return {
        "providers": {
            "primary": {"type": "openai", "base_url": up1.base_url, "api_key": "sk-test-secret-123"},
            "backup": {"type": "openai", "base_url": up2.base_url, "api_key": "sk-test-backup-456"},
        },
        "models": {"chat": fast_alias({"provider": "primary", "model": "gpt-4o-mini-2024-07-18"},
                                      {"provider": "backup", "model": "backup-model"}, **alias_kw)},
        "prices": PRICES,
    }


def recorded(server, trace_id):
    server.flush()
    return server.engine.store.get_trace(trace_id)


# ---- the happy path -------------------------------------------------------------------

def test_chat_completion_is_forwarded_recorded_and_priced(serve, fake_openai):
    fake_openai.reply_text = "Hello there"
    fake_openai.usage = (1000, 500)
    server = serve(one_upstream(fake_openai))
    client = client_for(server)
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=MSG, temperature=0, seed=7, user="u-42",
        metadata={"session_id": "s-1", "feature": "greeting"},
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "Hello there"
    assert resp.usage.prompt_tokens == 1000
    trace_id = raw.headers["x-shipyard-trace-id"]
    sent = fake_openai.requests[-1]
    assert sent["json"]["model"] == "gpt-4o-mini-2024-07-18"
    assert sent["json"]["seed"] == 7 and sent["json"]["user"] == "u-42"
    assert "metadata" not in sent["json"]  # gateway-only field
    assert sent["headers"]["authorization"] == "Bearer sk-test-secret-123"

    trace = recorded(server, trace_id)
    (span,) = trace["spans"]
    assert span["alias"] == "chat" and span["provider"] == "primary"
    assert span["response_model"] == "gpt-4o-mini-2024-07-18"
    assert span["user_id"] == "u-42" and span["session_id"] == "s-1"
    assert (span["input_tokens"], span["output_tokens"]) == (1000, 500)
    assert span["cost_usd"] == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert span["completion_id"] == resp.id
    assert span["input"]["messages"] == MSG
    assert span["output"]["choices"][0]["message"]["content"] == "Hello there"
    assert span["attributes"]["metadata"]["feature"] == "greeting"
    assert [a["outcome"] for a in span["attributes"]["attempts"]] == ["ok"]


def test_unknown_price_is_null_not_zero(serve, fake_openai):
    cfg = one_upstream(fake_openai)
    cfg["prices"] = {}
    server = serve(cfg)
    raw = client_for(server).chat.completions.with_raw_response.create(model="chat", messages=MSG)
    span = recorded(server, raw.headers["x-shipyard-trace-id"])["spans"][0]
    assert span["input_tokens"] is not None and span["cost_usd"] is None


def test_streaming_reassembles_and_reports_usage_when_asked(serve, fake_openai):
    fake_openai.reply_text = "one two three four"
    server = serve(one_upstream(fake_openai))
    client = client_for(server)
    chunks = list(client.chat.completions.create(
        model="chat", messages=MSG, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7

    # without include_usage the client gets no usage chunk, but the gateway still prices it
    with client.chat.completions.with_streaming_response.create(model="chat", messages=MSG, stream=True) as raw:
        trace_id = raw.headers["x-shipyard-trace-id"]
        body = raw.read().decode()
    events = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])
    assert fake_openai.requests[-1]["json"]["stream_options"] == {"include_usage": True}
    span = recorded(server, trace_id)["spans"][0]
    assert span["output"]["choices"][0]["message"]["content"] == "one two three four"
    assert span["cost_usd"] is not None and span["ttft_ms"] is not None
    assert span["attributes"]["stream"] is True


def test_tools_response_format_n_stop_and_max_tokens_pass_through(serve, fake_openai):
    fake_openai.reply_tool_calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    server = serve(one_upstream(fake_openai))
    client = client_for(server)
    tools = [{"type": "function", "function": {"name": "get_weather",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    resp = client.chat.completions.create(model="chat", messages=MSG, tools=tools, tool_choice="required")
    call = resp.choices[0].message.tool_calls[0]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    stream = client.chat.completions.create(model="chat", messages=MSG, tools=tools, stream=True)
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                   for c in stream if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(args) == {"city": "Paris"}

    fake_openai.reply_tool_calls = None
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    resp = client.chat.completions.create(
        model="chat", messages=MSG, n=2, stop=["\n"], max_completion_tokens=50,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert len(resp.choices) == 2
    sent = fake_openai.requests[-1]["json"]
    assert sent["n"] == 2 and sent["stop"] == ["\n"] and sent["max_completion_tokens"] == 50
    assert sent["response_format"]["json_schema"]["schema"] == schema


# ---- reliability ----------------------------------------------------------------------

def test_retries_5xx_then_succeeds_on_same_target(serve, fake_openai):
    fake_openai.fail_next(Fault("status", status=503), times=2)
    server = serve(one_upstream(fake_openai, retries=2))
    raw = client_for(server).chat.completions.with_raw_response.create(model="chat", messages=MSG)
    assert raw.parse().choices[0].message.content
    assert len(fake_openai.requests) == 3
    attempts = recorded(server, raw.headers["x-shipyard-trace-id"])["spans"][0]["attributes"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["http_503", "http_503", "ok"]


def test_429_retry_after_is_honoured(serve, fake_openai):
    fake_openai.fail_next(Fault("status", status=429, retry_after=0.5))
    server = serve(one_upstream(fake_openai, retries=1))
    t0 = time.monotonic()
    client_for(server).chat.completions.create(model="chat", messages=MSG)
    assert time.monotonic() - t0 >= 0.5  # waited as told (a behaviour check, not a speed target)
    assert len(fake_openai.requests) == 2


def test_retry_after_longer_than_allowed_falls_over_instead(serve, fake_openai, fake_openai_2):
    fake_openai.fail_next(Fault("status", status=429, retry_after=120))
    server = serve(two_upstreams(fake_openai, fake_openai_2, retries=3, max_retry_after_s=5))
    resp = client_for(server).chat.completions.create(model="chat", messages=MSG)
    assert resp.choices[0].message.content
    assert len(fake_openai.requests) == 1 and len(fake_openai_2.requests) == 1


@pytest.mark.parametrize("fault", [
    Fault("status", status=500), Fault("reset"), Fault("malformed"), Fault("delay", seconds=3),
])
def test_falls_over_to_next_target(serve, fake_openai, fake_openai_2, fault):
    fake_openai.fail_next(fault, times=5)
    fake_openai_2.reply_text = "from backup"
    server = serve(two_upstreams(fake_openai, fake_openai_2, retries=1, timeout_s=1))
    raw = client_for(server).chat.completions.with_raw_response.create(model="chat", messages=MSG)
    assert raw.parse().choices[0].message.content == "from backup"
    assert fake_openai_2.requests[-1]["json"]["model"] == "backup-model"
    assert fake_openai_2.requests[-1]["headers"]["authorization"] == "Bearer sk-test-backup-456"
    span = recorded(server, raw.headers["x-shipyard-trace-id"])["spans"][0]
    assert span["provider"] == "backup" and span["attributes"]["fallbacks"] == 1
    assert [a["provider"] for a in span["attributes"]["attempts"]] == ["primary", "primary", "backup"]


def test_client_error_is_returned_without_fallback(serve, fake_openai, fake_openai_2):
    fake_openai.fail_next(Fault("status", status=400, body={"error": {"message": "bad param foo", "type": "invalid_request_error"}}))
    server = serve(two_upstreams(fake_openai, fake_openai_2))
    with pytest.raises(openai.BadRequestError) as err:
        client_for(server).chat.completions.create(model="chat", messages=MSG)
    assert "bad param foo" in str(err.value)
    assert fake_openai_2.requests == []


def test_all_targets_failing_is_a_502_naming_each(serve, fake_openai, fake_openai_2):
    fake_openai.fail_next(Fault("status", status=500), times=10)
    fake_openai_2.fail_next(Fault("reset"), times=10)
    server = serve(two_upstreams(fake_openai, fake_openai_2, retries=1))
    with pytest.raises(openai.InternalServerError) as err:
        client_for(server).chat.completions.create(model="chat", messages=MSG)
    assert err.value.status_code == 502
    msg = err.value.message
    assert "primary/gpt-4o-mini-2024-07-18" in msg and "HTTP 500" in msg
    assert "backup/backup-model" in msg and "connection error" in msg
    assert "sk-test" not in msg and "Traceback" not in msg


def test_fallback_response_degrades_gracefully(serve, fake_openai):
    fake_openai.fail_next(Fault("status", status=500), times=10)
    server = serve(one_upstream(fake_openai, retries=0, fallback_response="We are busy, try again soon."))
    client = client_for(server)
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
    assert raw.parse().choices[0].message.content == "We are busy, try again soon."
    span = recorded(server, raw.headers["x-shipyard-trace-id"])["spans"][0]
    assert span["attributes"]["fallback_response"] is True and span["status"] == "error"
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="chat", messages=MSG, stream=True) if c.choices)
    assert text == "We are busy, try again soon."


def test_circuit_breaker_opens_skips_target_then_probes(serve, fake_openai, fake_openai_2):
    fake_openai.fail_next(Fault("status", status=500), times=3)
    server = serve(two_upstreams(fake_openai, fake_openai_2, retries=0,
                                 circuit_breaker={"failure_threshold": 3, "cooldown_s": 0.5}))
    client = client_for(server)
    for _ in range(3):
        client.chat.completions.create(model="chat", messages=MSG)
    assert len(fake_openai.requests) == 3
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
    assert len(fake_openai.requests) == 3  # open: primary not called
    attempts = recorded(server, raw.headers["x-shipyard-trace-id"])["spans"][0]["attributes"]["attempts"]
    assert attempts[0]["outcome"] == "breaker_open"
    time.sleep(0.6)
    resp = client.chat.completions.create(model="chat", messages=MSG)  # half-open probe succeeds
    assert len(fake_openai.requests) == 4 and resp.choices[0].message.content
    client.chat.completions.create(model="chat", messages=MSG)
    assert len(fake_openai.requests) == 5  # closed again


def test_all_breakers_open_is_503_with_retry_after(serve, fake_openai):
    fake_openai.fail_next(Fault("status", status=500), times=2)
    server = serve(one_upstream(fake_openai, retries=0, circuit_breaker={"failure_threshold": 2, "cooldown_s": 30}))
    client = client_for(server)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="chat", messages=MSG)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="chat", messages=MSG)
    assert err.value.status_code == 503
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert "circuit open" in err.value.message


# ---- streaming reliability ------------------------------------------------------------

def test_stream_failure_before_first_byte_falls_over_transparently(serve, fake_openai, fake_openai_2):
    fake_openai.fail_next(Fault("status", status=500), times=5)
    fake_openai_2.reply_text = "backup streams"
    server = serve(two_upstreams(fake_openai, fake_openai_2, retries=0))
    chunks = list(client_for(server).chat.completions.create(model="chat", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "backup streams"


def test_ttft_timeout_falls_over(serve, fake_openai, fake_openai_2):
    fake_openai.fail_next(Fault("first_chunk_delay", seconds=3), times=5)
    server = serve(two_upstreams(fake_openai, fake_openai_2, retries=0, ttft_timeout_s=0.3))
    chunks = list(client_for(server).chat.completions.create(model="chat", messages=MSG, stream=True))
    assert chunks and len(fake_openai_2.requests) == 1


def test_mid_stream_failure_ends_with_error_event_not_silent_truncation(serve, fake_openai):
    fake_openai.reply_text = "a b c d e f g h"
    fake_openai.fail_next(Fault("cut_stream", after_chunks=2))
    server = serve(one_upstream(fake_openai, retries=0))
    client = client_for(server)
    got = []
    with pytest.raises(openai.APIError) as err:
        for c in client.chat.completions.create(model="chat", messages=MSG, stream=True):
            got.append(c)
    assert got, "the first chunks were relayed before the failure"
    assert "incomplete" in str(err.value)
    server.flush()
    rows, _ = server.engine.store.list_traces(__import__("shipyard.store", fromlist=["TraceFilter"]).TraceFilter())
    assert rows[0]["status"] == "error"


def test_client_disconnect_cancels_upstream_stream(serve, fake_openai):
    fake_openai.fail_next(Fault("hang_stream", after_chunks=1))
    server = serve(one_upstream(fake_openai, retries=0))
    with httpx.stream("POST", server.base_url + "/chat/completions",
                      json={"model": "chat", "messages": MSG, "stream": True}, timeout=10) as r:
        trace_id = r.headers["x-shipyard-trace-id"]
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # got the first chunk; now hang up
    assert fake_openai.wait_for_disconnect(timeout=5)
    deadline = time.monotonic() + 5
    trace = None
    while time.monotonic() < deadline:
        trace = recorded(server, trace_id)
        if trace:
            break
        time.sleep(0.05)
    assert trace["spans"][0]["status"] == "error"
    assert "client disconnected" in trace["spans"][0]["error"]


def test_non_stream_client_disconnect_cancels_upstream(serve, fake_openai):
    fake_openai.fail_next(Fault("delay", seconds=5))
    server = serve(one_upstream(fake_openai, retries=0, timeout_s=10))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/chat/completions", json={"model": "chat", "messages": MSG}, timeout=0.3)
    server.flush()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        server.flush()
        from shipyard.store import TraceFilter
        rows, _ = server.engine.store.list_traces(TraceFilter())
        if rows:
            break
        time.sleep(0.05)
    assert rows and rows[0]["status"] == "error"


# ---- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1,2]", 400, "JSON object"),
    (json.dumps({"messages": MSG}).encode(), 400, "'model'"),
    (json.dumps({"model": "chat"}).encode(), 400, "'messages'"),
    (json.dumps({"model": "chat", "messages": MSG, "temperature": "hot"}).encode(), 400, "'temperature'"),
    (json.dumps({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "messages[0].role"),
    (json.dumps({"model": "chat", "messages": MSG, "n": 0}).encode(), 400, "'n'"),
    (json.dumps({"model": "chat", "messages": MSG, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}).encode(), 400, "not a valid JSON Schema"),
    (json.dumps({"model": "nope", "messages": MSG}).encode(), 404, "Available models: chat"),
])
def test_bad_input_gets_a_clear_openai_error(serve, fake_openai, body, status, needle):
    server = serve(one_upstream(fake_openai))
    r = httpx.post(server.base_url + "/chat/completions", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"
    assert fake_openai.requests == []


def test_oversized_body_is_413(serve, fake_openai):
    cfg = one_upstream(fake_openai)
    cfg["server"] = {"max_body_bytes": 2048}
    server = serve(cfg)
    big = {"model": "chat", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(server.base_url + "/chat/completions", json=big)
    assert r.status_code == 413 and "limit of 2048" in r.text or "limit is 2048" in r.text
    with pytest.raises(openai.APIStatusError) as err:
        client_for(server).chat.completions.create(model="chat", messages=big["messages"])
    assert err.value.status_code == 413


def test_unknown_route_and_method_are_openai_errors(serve, fake_openai):
    server = serve(one_upstream(fake_openai))
    r = httpx.get(server.base_url + "/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = httpx.get(server.base_url + "/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


# ---- other endpoints ------------------------------------------------------------------

def test_embeddings_models_health_ready(serve, fake_openai):
    cfg = one_upstream(fake_openai)
    cfg["models"]["embed"] = {"targets": [{"provider": "primary", "model": "text-embedding-3-small"}]}
    server = serve(cfg)
    client = client_for(server)
    emb = client.embeddings.create(model="embed", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert fake_openai.requests[-1]["json"]["model"] == "text-embedding-3-small"
    assert sorted(m.id for m in client.models.list()) == ["chat", "embed"]
    assert client.models.retrieve("chat").id == "chat"
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_traceparent_joins_the_callers_trace(serve, fake_openai):
    server = serve(one_upstream(fake_openai))
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    raw = client_for(server).chat.completions.with_raw_response.create(
        model="chat", messages=MSG, extra_headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert raw.headers["x-shipyard-trace-id"] == trace_id
    span = recorded(server, trace_id)["spans"][0]
    assert span["parent_id"] == parent


def test_concurrent_requests_all_recorded(serve, fake_openai):
    server = serve(one_upstream(fake_openai))
    client = client_for(server)
    ids: list[str] = []

    def worker():
        for _ in range(10):
            ids.append(client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
                       .headers["x-shipyard-trace-id"])

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server.flush()
    assert len(ids) == 50 and all(server.engine.store.get_trace(i) for i in ids)
    assert server.engine.recorder.dropped == 0
