"""Feedback and outcomes through a real `shipyard serve` (fake upstream, openai SDK client):
POST /api/feedback by trace id and by completion id, idempotency, auth, validation, CORS,
GET /api/feedback/stats by alias / model / prompt version / route, outcomes joined to
sessions, and the library helper `Gateway.feedback`.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from conftest import client_for, fast_alias

KEY = "fb-test-key-0123456789"
PRICES = {"gpt-4o-mini-2024-07-18": {"input": 0.15, "output": 0.60}}


def config(up: Any, **feedback: Any) -> dict[str, Any]:
    return {
        "providers": {"fake": {"type": "openai", "base_url": up.base_url, "api_key": "sk-test"}},
        "models": {
            "chat": fast_alias({"provider": "fake", "model": "gpt-4o-mini-2024-07-18"}, retries=0),
            "smart": fast_alias({"provider": "fake", "model": "gpt-4o-2024-08-06"}, retries=0),
        },
        "prices": PRICES,
        "feedback": {"api_keys": [KEY], **feedback},
    }


@pytest.fixture
def server(serve, fake_openai):
    return serve(config(fake_openai, allow_origins=["http://app.example"]))


def call(server: Any, model: str = "chat", content: str = "hello", **kw: Any) -> tuple[str, str]:
    """(trace id, completion id) of one chat completion through the gateway."""
    raw = client_for(server).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **kw)
    return raw.headers["x-shipyard-trace-id"], raw.parse().id


def post(server: Any, path: str, body: Any, key: str | None = KEY, **headers: str) -> httpx.Response:
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(server.url + path, json=body, headers=headers, timeout=30)


def get(server: Any, path: str, **params: Any) -> httpx.Response:
    return httpx.get(server.url + path, params=params, timeout=30)


# ---- addressing ------------------------------------------------------------------------------

def test_feedback_by_trace_id_right_after_the_response(server):
    trace_id, completion_id = call(server, user="alice", extra_body={"metadata": {"session_id": "s-1"}})
    # no flush: the recorder may not have written the span yet
    r = post(server, "/api/feedback", {"trace_id": trace_id, "kind": "thumbs", "value": "up"})
    assert r.status_code == 201, r.text
    fb = r.json()
    assert fb["trace_id"] == trace_id and fb["completion_id"] == completion_id and fb["span_id"]
    assert (fb["kind"], fb["value"], fb["sentiment"], fb["source"]) == ("thumbs", 1.0, 1, "end_user")
    assert (fb["alias"], fb["model"], fb["route"]) == ("chat", "gpt-4o-mini-2024-07-18", "chat")
    assert fb["user_id"] == "alice" and fb["session_id"] == "s-1"
    assert fb["principal"].startswith("key:") and KEY not in r.text
    server.flush()
    summary = get(server, f"/api/traces/{trace_id}/feedback").json()
    assert [f["id"] for f in summary["feedback"]] == [fb["id"]]
    assert summary["counts"] == {"positive": 1, "negative": 0, "neutral": 0}
    assert summary["labels"] == [] and summary["session_id"] == "s-1"


def test_feedback_by_completion_id(server):
    trace_id, completion_id = call(server, model="smart")
    server.flush()
    r = post(server, "/api/feedback", {"completion_id": completion_id, "kind": "correction",
                                       "text": "The right answer.", "source": "annotator"})
    assert r.status_code == 201, r.text
    assert r.json()["trace_id"] == trace_id and r.json()["alias"] == "smart" and r.json()["sentiment"] == -1
    # both ids, consistent: fine; inconsistent: 400
    ok = post(server, "/api/feedback", {"trace_id": trace_id, "completion_id": completion_id, "kind": "copied"})
    assert ok.status_code == 201
    other, _ = call(server)
    bad = post(server, "/api/feedback", {"trace_id": other, "completion_id": completion_id, "kind": "copied"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "trace_mismatch"
    listed = get(server, "/api/feedback", trace_id=trace_id).json()["data"]
    assert [f["kind"] for f in listed] == ["copied", "correction"]  # newest first


def test_unknown_trace_or_completion_is_a_404(server):
    call(server)
    r = post(server, "/api/feedback", {"trace_id": "0" * 32, "kind": "accepted"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "trace_not_found" and "0" * 32 in r.json()["error"]["message"]
    r = post(server, "/api/feedback", {"completion_id": "chatcmpl-nope", "kind": "accepted"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "completion_not_found"
    r = get(server, f"/api/traces/{'0' * 32}/feedback")
    assert r.status_code == 404


def test_a_duplicate_idempotency_key_is_not_counted_twice(server):
    trace_id, _ = call(server)
    body = {"trace_id": trace_id, "kind": "thumbs", "value": "down", "idempotency_key": "evt-1"}
    first = post(server, "/api/feedback", body)
    again = post(server, "/api/feedback", body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["duplicate"] is True and again.json()["id"] == first.json()["id"]
    # the header form is the same key
    by_header = post(server, "/api/feedback", {k: v for k, v in body.items() if k != "idempotency_key"},
                     **{"idempotency-key": "evt-1"})
    assert by_header.status_code == 200 and by_header.json()["id"] == first.json()["id"]
    # the same key for a different event is a conflict, not a silent overwrite
    clash = post(server, "/api/feedback", {**body, "value": "up"})
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "idempotency_key_reused"
    stats = get(server, "/api/feedback/stats", since="1h").json()
    assert stats["summary"]["total"] == 1 and stats["summary"]["negative"] == 1
    assert len(get(server, "/api/feedback", trace_id=trace_id).json()["data"]) == 1


def test_every_kind_with_its_sentiment(server):
    trace_id, _ = call(server)
    cases = [
        ({"kind": "thumbs_up"}, 1), ({"kind": "thumbs", "value": False}, -1),
        ({"kind": "score", "value": 4, "scale": [1, 5]}, 1), ({"kind": "score", "value": 0.2}, -1),
        ({"kind": "label", "label": "off-topic"}, 0), ({"kind": "comment", "text": "nice"}, 0),
        ({"kind": "correction", "text": "better"}, -1), ({"kind": "accepted"}, 1),
        ({"kind": "edited", "text": "final text"}, 0), ({"kind": "ignored"}, -1), ({"kind": "regenerated"}, -1),
        ({"kind": "copied"}, 1),
    ]
    for extra, sentiment in cases:
        r = post(server, "/api/feedback", {"trace_id": trace_id, **extra})
        assert r.status_code == 201, (extra, r.text)
        assert r.json()["sentiment"] == sentiment, extra
    four = next(f for f in get(server, "/api/feedback", trace_id=trace_id).json()["data"] if f["value"] == 4)
    assert four["score_norm"] == 0.75
    kinds = {f["kind"] for f in get(server, "/api/feedback", trace_id=trace_id).json()["data"]}
    assert kinds == {"thumbs", "score", "label", "comment", "correction", "accepted", "edited", "ignored",
                     "regenerated", "copied"}


@pytest.mark.parametrize("body, param", [
    ({"kind": "like"}, "kind"),
    ({"kind": "thumbs", "value": "meh"}, "value"),
    ({"kind": "score"}, "value"),
    ({"kind": "score", "value": 7}, "value"),
    ({"kind": "score", "value": 3, "scale": [5, 1]}, "scale"),
    ({"kind": "correction"}, "text"),
    ({"kind": "accepted", "value": 1}, "value"),
    ({"kind": "accepted", "source": "robot"}, "source"),
    ({"kind": "accepted", "colour": "red"}, "colour"),
    ({"kind": "accepted", "metadata": [1]}, "metadata"),
])
def test_bad_feedback_is_a_400_naming_the_field(server, body, param):
    trace_id, _ = call(server)
    r = post(server, "/api/feedback", {"trace_id": trace_id, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_missing_target_and_bad_json(server):
    r = post(server, "/api/feedback", {"kind": "accepted"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_target"
    r = httpx.post(server.url + "/api/feedback", content=b"{nope", timeout=10,
                   headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


# ---- auth ------------------------------------------------------------------------------------

def test_feedback_needs_an_api_key(server):
    trace_id, _ = call(server)
    r = post(server, "/api/feedback", {"trace_id": trace_id, "kind": "accepted"}, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = post(server, "/api/feedback", {"trace_id": trace_id, "kind": "accepted"}, key="wrong-key-0123456789")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = post(server, "/api/outcomes", {"session_id": "s", "name": "purchase", "value": 1}, key=None)
    assert r.status_code == 401


def test_anonymous_feedback_when_allowed_and_no_keys_configured(serve, fake_openai):
    cfg = config(fake_openai, allow_anonymous=True)
    server = serve(cfg)
    trace_id, _ = call(server)
    r = post(server, "/api/feedback", {"trace_id": trace_id, "kind": "accepted"}, key=None)
    assert r.status_code == 201 and r.json()["principal"] is None
    closed = serve({**cfg, "feedback": {}})
    trace_id, _ = call(closed)
    r = post(closed, "/api/feedback", {"trace_id": trace_id, "kind": "accepted"}, key=None)
    assert r.status_code == 401 and "feedback.api_keys" in r.json()["error"]["message"]


def test_config_rejects_short_keys_and_keeps_them_out_of_the_hash(fake_openai):
    from shipyard.config import load_config
    from shipyard.errors import ConfigError

    with pytest.raises(ConfigError, match="feedback.api_keys"):
        load_config(config(fake_openai) | {"feedback": {"api_keys": ["short"]}})
    a = load_config(config(fake_openai)).config_hash()
    b = load_config(config(fake_openai) | {"feedback": {"api_keys": ["another-key-0123456789"]}}).config_hash()
    assert a == b


def test_cors_preflight_for_browser_front_ends(server):
    r = httpx.options(server.url + "/api/feedback", timeout=10, headers={
        "origin": "http://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    assert "authorization" in r.headers["access-control-allow-headers"]
    r = httpx.options(server.url + "/api/feedback", timeout=10, headers={"origin": "http://evil.example"})
    assert r.status_code == 204 and "access-control-allow-origin" not in r.headers
    trace_id, _ = call(server)
    r = post(server, "/api/feedback", {"trace_id": trace_id, "kind": "accepted"}, origin="http://app.example")
    assert r.status_code == 201 and r.headers["access-control-allow-origin"] == "http://app.example"


# ---- analytics -------------------------------------------------------------------------------

def test_stats_by_alias_model_route_and_prompt_version(server):
    ids = {}
    for name, model in (("a1", "chat"), ("a2", "chat"), ("a3", "chat"), ("b1", "smart"), ("b2", "smart")):
        ids[name], _ = call(server, model=model, content=name)
    for name in ("a1", "a2"):
        assert post(server, "/api/feedback", {"trace_id": ids[name], "kind": "thumbs_up"}).status_code == 201
    post(server, "/api/feedback", {"trace_id": ids["a3"], "kind": "thumbs_down"})
    post(server, "/api/feedback", {"trace_id": ids["b1"], "kind": "regenerated"})
    post(server, "/api/feedback", {"trace_id": ids["b2"], "kind": "score", "value": 0.9})
    data = get(server, "/api/feedback/stats", since="1h", by="alias").json()
    totals = {r["group"]: r for r in data["totals"]}
    assert totals["chat"]["total"] == 3 and totals["chat"]["positive"] == 2 and totals["chat"]["negative"] == 1
    assert totals["chat"]["positive_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert totals["smart"]["negative_rate"] == 0.5 and totals["smart"]["mean_score"] == 0.9
    assert totals["smart"]["by_kind"] == {"regenerated": 1, "score": 1}
    assert data["summary"]["total"] == 5 and data["summary"]["traces"] == 5
    assert {r["group"] for r in data["data"]} == {"chat", "smart"} and all("bucket_start" in r for r in data["data"])
    by_model = {r["group"] for r in get(server, "/api/feedback/stats", since="1h", by="model").json()["totals"]}
    assert by_model == {"gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"}
    by_route = {r["group"] for r in get(server, "/api/feedback/stats", since="1h", by="route").json()["totals"]}
    assert by_route == {"chat", "smart"}
    by_prompt = get(server, "/api/feedback/stats", since="1h", by="prompt_version").json()["totals"]
    assert [r["group"] for r in by_prompt] == ["(none)"]  # no registry prompt ran
    only_users = get(server, "/api/feedback/stats", since="1h", source="annotator").json()
    assert only_users["summary"]["total"] == 0
    assert get(server, "/api/feedback/stats", by="colour").status_code == 400
    assert get(server, "/api/feedback/stats", bucket="nope").json()["error"]["param"] == "bucket"
    assert get(server, "/api/feedback/stats", flavour="x").status_code == 400


def test_prompt_version_comes_from_the_span(tmp_path):
    """A registry prompt's version (span attribute `prompt`) becomes the prompt_version group."""
    from shipyard.feedback import FeedbackService, feedback_stats, parse_feedback
    from shipyard.store import open_store
    from shipyard.tracing.span import Span

    store = open_store(f"sqlite:///{tmp_path}/p.db")
    t0 = time.time()
    spans = [Span(trace_id=f"{i:032x}", span_id=f"{i:016x}", name="chat support", kind="llm", alias="chat",
                  model="m", start_time=t0 - 5 + i, end_time=t0 - 4 + i,
                  attributes={"prompt": {"name": "support", "version": 1 + i % 2, "label": "production"}})
             for i in range(4)]
    store.write_spans(spans, lambda v: None)
    svc = FeedbackService(store)
    for i in range(4):
        svc.record(parse_feedback({"trace_id": f"{i:032x}", "kind": "thumbs", "value": "up" if i < 3 else "down"}))
    data = feedback_stats(store, t0 - 3600, t0 + 60, 3600, "prompt_version")
    totals = {r["group"]: (r["positive"], r["negative"]) for r in data["totals"]}
    assert totals == {"support@1": (2, 0), "support@2": (1, 1)}
    routes = {r["group"] for r in feedback_stats(store, t0 - 3600, t0 + 60, 3600, "route")["totals"]}
    assert routes == {"support"}
    store.close()


def test_outcomes_join_the_sessions_traces(server):
    t1, _ = call(server, extra_body={"metadata": {"session_id": "sess-9"}})
    t2, _ = call(server, model="smart", extra_body={"metadata": {"session_id": "sess-9"}})
    call(server, extra_body={"metadata": {"session_id": "other"}})
    server.flush()
    r = post(server, "/api/outcomes", {"session_id": "sess-9", "name": "purchase_usd", "value": 42.5,
                                       "idempotency_key": "order-1"})
    assert r.status_code == 201, r.text
    assert set(r.json()["traces"]) == {t1, t2}
    again = post(server, "/api/outcomes", {"session_id": "sess-9", "name": "purchase_usd", "value": 42.5,
                                           "idempotency_key": "order-1"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert post(server, "/api/outcomes", {"name": "x", "value": 1}).status_code == 400
    assert post(server, "/api/outcomes", {"session_id": "s", "name": "x", "value": "lots"}).status_code == 400
    by_trace = post(server, "/api/outcomes", {"trace_id": t1, "name": "resolved", "value": 1})
    assert by_trace.status_code == 201 and by_trace.json()["session_id"] == "sess-9"
    summary = get(server, f"/api/traces/{t2}/feedback").json()
    assert {(o["name"], o["value"]) for o in summary["outcomes"]} == {("purchase_usd", 42.5), ("resolved", 1.0)}
    stats = get(server, "/api/feedback/stats", since="1h", by="alias").json()["outcomes"]
    purchase = {o["group"]: o for o in stats if o["name"] == "purchase_usd"}
    assert set(purchase) == {"chat", "smart"} and purchase["chat"]["mean"] == 42.5 and purchase["chat"]["count"] == 1


# ---- the library -----------------------------------------------------------------------------

def test_library_helper_by_trace_id_and_completion_id(fake_openai, tmp_path):
    from shipyard import Gateway
    from shipyard.errors import NotFound

    cfg = config(fake_openai) | {"store": f"sqlite:///{tmp_path}/lib.db"}
    with Gateway(cfg) as gw:
        resp = gw.chat(model="chat", messages=[{"role": "user", "content": "hi"}])
        fb = gw.feedback(resp.trace_id, kind="thumbs", value="up", user_id="u1", idempotency_key="k-1")
        assert fb["trace_id"] == resp.trace_id and fb["sentiment"] == 1 and fb["principal"] == "library"
        again = gw.feedback(resp.trace_id, kind="thumbs", value="up", user_id="u1", idempotency_key="k-1")
        assert again["duplicate"] is True and again["id"] == fb["id"]
        by_completion = gw.feedback(completion_id=resp.id, kind="edited", text="Hi there!")
        assert by_completion["trace_id"] == resp.trace_id and by_completion["kind"] == "edited"
        with pytest.raises(NotFound):
            gw.feedback("f" * 32, kind="accepted")
    from shipyard.feedback import FeedbackService
    from shipyard.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/lib.db")
    assert [f["kind"] for f in FeedbackService(store).list_feedback(trace_id=resp.trace_id)] == ["edited", "thumbs"]
    store.close()


async def test_library_helper_async(fake_openai, tmp_path):
    from shipyard import Gateway

    async with Gateway(config(fake_openai) | {"store": f"sqlite:///{tmp_path}/alib.db"}) as gw:
        resp = await gw.achat(model="chat", messages=[{"role": "user", "content": "hi"}])
        fb = await gw.afeedback(resp.trace_id, kind="score", value=0.8)
        assert fb["score_norm"] == 0.8 and fb["alias"] == "chat"
