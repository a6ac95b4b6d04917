"""Intent routing, cascades and model pinning — every decision visible in the trace."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import client_for
from fakes import FakeOpenAI, Fault
from test_releases_support import (
    call,
    create_prompt,
    fast_alias,
    http,
    providers,
    spans_by_kind,
    trace_of,
)

from shipyard.config import load_config
from shipyard.errors import ConfigError
from shipyard.releases import pinning
from shipyard.releases.config import IntentRouterConfig
from shipyard.releases.intent import IntentRouter

MINI, BIG = "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


class LogprobFake(FakeOpenAI):
    """Adds logprobs (each token at ``logprob``) when asked, and can report another model."""

    def __init__(self) -> None:
        super().__init__()
        self.logprob = -0.05
        self.report_model: str | None = None

    def _completion(self, body: dict[str, Any], reply: Any) -> dict[str, Any]:
        out = super()._completion(body, reply)
        if body.get("logprobs"):
            toks = (reply.content or "").split()
            for c in out["choices"]:
                c["logprobs"] = {"content": [{"token": t, "logprob": self.logprob, "bytes": None, "top_logprobs": []}
                                             for t in toks]}
        if self.report_model:
            out["model"] = self.report_model
        return out


@pytest.fixture
def fake_lp() -> Iterator[LogprobFake]:
    with LogprobFake() as up:
        yield up


# ---- intent routing --------------------------------------------------------------------------------
ROUTER = {
    "default": "general",
    "threshold": 0.15,
    "intents": {
        "billing": {"route": "billing", "keywords": ["invoice", "refund", "charged"],
                    "examples": ["I was charged twice this month", "Where is my invoice?"]},
        "tech": {"route": "tech", "patterns": [r"(?i)\berror\s+code\s+\d+"],
                 "examples": ["The app crashes when I open settings", "Login page shows a blank screen",
                              "The app keeps crashing on start"]},
    },
}


async def test_intent_classification_rules_keywords_centroid_default() -> None:
    r = IntentRouter("support", IntentRouterConfig.model_validate(ROUTER), engine=None)
    route, d = await r.classify(user("I got error code 42 after the update"))
    assert (route, d["intent"], d["method"], d["score"]) == ("tech", "tech", "rule", 1.0)
    route, d = await r.classify(user("Please REFUND me, I was charged for nothing"))
    assert (route, d["intent"], d["method"]) == ("billing", "billing", "keywords")
    assert sorted(d["matched"]) == ["charged", "refund"]
    route, d = await r.classify(user("my app crashes every time on start"))
    assert (route, d["intent"], d["method"]) == ("tech", "tech", "centroid") and d["score"] >= 0.15
    route, d = await r.classify(user("Tell me a joke about penguins"))
    assert (route, d["intent"], d["method"]) == ("general", None, "default")
    # only the last user message counts by default
    route, d = await r.classify([*user("refund please"), {"role": "assistant", "content": "ok"},
                                 *user("actually: error code 7")])
    assert d["intent"] == "tech"


def intent_config(up: Any, up2: Any) -> dict[str, Any]:
    return {"providers": providers(up, up2),
            "models": {"billing": fast_alias({"provider": "p", "model": MINI}),
                       "tech": fast_alias({"provider": "q", "model": BIG}),
                       "general": fast_alias({"provider": "p", "model": "gpt-4.1-nano-2025-04-14"})},
            "routers": {"support": {**ROUTER, "intents": {**ROUTER["intents"], "faq": {
                "route": "prompt:faq@production", "keywords": ["opening hours"]}}}}}


def test_intent_router_sends_each_request_to_its_route(serve: Any, fake_openai: Any, fake_openai_2: Any) -> None:
    s = serve(intent_config(fake_openai, fake_openai_2))
    with http(s) as h:
        create_prompt(h, "faq", "general", [{"role": "system", "content": "You know our opening hours."}],
                      labels=["production"])
    client = client_for(s)
    _, tid = call(client, model="support", messages=user("Where is my invoice for March?"))
    assert fake_openai.requests[-1]["json"]["model"] == MINI
    trace = trace_of(s, tid)
    (llm,) = spans_by_kind(trace, "llm")
    assert llm["alias"] == "billing"
    assert llm["attributes"]["route"] == {"router": "support", "intent": "billing", "score": pytest.approx(1 / 3,
                                                                                                          abs=1e-3),
                                          "method": "keywords"}
    (router,) = spans_by_kind(trace, "router")
    assert router["parent_id"] == llm["span_id"] and router["attributes"]["route"]["route"] == "billing"

    call(client, model="support", messages=user("error code 500 on login"))
    assert fake_openai_2.requests[-1]["json"]["model"] == BIG
    _, tid = call(client, model="support", messages=user("What are your opening hours?"))
    sent = fake_openai.requests[-1]["json"]
    assert sent["model"] == "gpt-4.1-nano-2025-04-14"
    assert sent["messages"][0]["content"] == "You know our opening hours."  # routed to a prompt
    llm = spans_by_kind(trace_of(s, tid), "llm")[0]
    assert llm["attributes"]["route"]["intent"] == "faq" and llm["attributes"]["prompt"]["name"] == "faq"
    _, tid = call(client, model="support", messages=user("Sing me a song"))
    assert spans_by_kind(trace_of(s, tid), "llm")[0]["alias"] == "general"


def test_intent_router_config_errors_name_the_key() -> None:
    base = {"providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "models": {"a": {"targets": [{"provider": "p", "model": "m"}]}}}
    with pytest.raises(ConfigError) as exc:
        load_config({**base, "routers": {"r": {"default": "nope", "intents": {"x": {"route": "a", "keywords": ["k"]}}}}})
    assert "routers.r.default: unknown model alias 'nope'" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config({**base, "routers": {"a": {"default": "a", "intents": {"x": {"route": "a", "keywords": ["k"]}}}}})
    assert "routers.a: the name is already a model alias" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config({**base, "routers": {"r": {"default": "a", "intents": {"x": {"route": "a"}}}}})
    assert "routers.r.intents.x" in str(exc.value) and "needs 'patterns', 'keywords' or 'examples'" in str(exc.value)


# ---- cascades --------------------------------------------------------------------------------------------
def cascade_config(cheap: Any, strong: Any, **on: Any) -> dict[str, Any]:
    return {"providers": providers(cheap, strong),
            "models": {"answer": fast_alias({"provider": "p", "model": MINI}, retries=0, cascade={
                "escalate_to": [{"alias": "strong"}], "escalate_on": on}),
                       "strong": fast_alias({"provider": "q", "model": BIG}, retries=0)}}


JSON_REQ = {"response_format": {"type": "json_object"}}


def test_cascade_escalates_when_the_cheap_answer_is_not_json(serve: Any, fake_openai: Any,
                                                             fake_openai_2: Any) -> None:
    fake_openai.reply_text, fake_openai_2.reply_text = "Sure! Here you go: city=Paris", '{"city": "Paris"}'
    s = serve(cascade_config(fake_openai, fake_openai_2))
    resp, tid = call(client_for(s), model="answer", messages=user("capital of France as JSON"), **JSON_REQ)
    assert resp.choices[0].message.content == '{"city": "Paris"}'
    assert len(fake_openai.requests) == 1 and len(fake_openai_2.requests) == 1
    trace = trace_of(s, tid)
    (llm,) = spans_by_kind(trace, "llm")
    assert llm["model"] == BIG and llm["alias"] == "answer"
    steps = llm["attributes"]["cascade"]["steps"]
    assert [(st["step"], st["outcome"]) for st in steps] == [(0, "escalated"), (1, "accepted")]
    assert steps[0]["reason"] == "answer is not valid JSON" and steps[0]["target"] == f"p/{MINI}"
    assert [a["model"] for a in llm["attributes"]["attempts"]] == [MINI, BIG]
    routers = spans_by_kind(trace, "router")
    assert [r["name"] for r in routers] == ["cascade answer"] and routers[0]["parent_id"] == llm["span_id"]


def test_cascade_keeps_a_good_cheap_answer(serve: Any, fake_openai: Any, fake_openai_2: Any) -> None:
    fake_openai.reply_text = '{"city": "Paris"}'
    s = serve(cascade_config(fake_openai, fake_openai_2))
    _, tid = call(client_for(s), model="answer", messages=user("x"), **JSON_REQ)
    assert len(fake_openai_2.requests) == 0
    casc = spans_by_kind(trace_of(s, tid), "llm")[0]["attributes"]["cascade"]
    assert casc == {"steps": [{"step": 0, "runs": "alias answer", "target": f"p/{MINI}", "ms": casc["steps"][0]["ms"],
                               "outcome": "accepted"}], "final_step": 0, "escalated": False, "outcome": "accepted"}


@pytest.mark.parametrize("cheap_reply, on, reason", [
    ("I'm sorry, but I can't help with that request.", {}, "refusal"),
    ("   ", {}, "empty answer"),
    ("The answer is maybe", {"regex": r"^\d+$"}, r"answer does not match /^\d+$/"),
])
def test_cascade_escalation_checks(serve: Any, fake_openai: Any, fake_openai_2: Any, cheap_reply: str,
                                   on: dict[str, Any], reason: str) -> None:
    fake_openai.reply_text, fake_openai_2.reply_text = cheap_reply, "42"
    s = serve(cascade_config(fake_openai, fake_openai_2, **on))
    resp, tid = call(client_for(s), model="answer", messages=user("x"))
    assert resp.choices[0].message.content == "42"
    step0 = spans_by_kind(trace_of(s, tid), "llm")[0]["attributes"]["cascade"]["steps"][0]
    assert step0["outcome"] == "escalated" and step0["reason"] == reason


def test_cascade_escalates_on_errors_and_schema_failures_and_streams(serve: Any, fake_openai: Any,
                                                                     fake_openai_2: Any) -> None:
    fake_openai_2.reply_text = '{"n": 3}'
    s = serve(cascade_config(fake_openai, fake_openai_2))
    client = client_for(s)
    fake_openai.fail_next(Fault("status", status=500))
    resp, tid = call(client, model="answer", messages=user("x"), **JSON_REQ)
    assert resp.choices[0].message.content == '{"n": 3}'
    steps = spans_by_kind(trace_of(s, tid), "llm")[0]["attributes"]["cascade"]["steps"]
    assert steps[0]["outcome"] == "error" and "All targets for model 'answer' failed" in steps[0]["reason"]

    fake_openai.reply_text = '{"n": "three"}'
    schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    resp, tid = call(client, model="answer", messages=user("x"), response_format=schema)
    assert resp.choices[0].message.content == '{"n": 3}'
    steps = spans_by_kind(trace_of(s, tid), "llm")[0]["attributes"]["cascade"]["steps"]
    assert steps[0]["reason"].startswith("answer does not match the response schema")

    fake_openai.reply_text = "not json at all"
    stream = client.chat.completions.create(model="answer", messages=user("x"), stream=True, **JSON_REQ)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == '{"n": 3}'

    # the last step is accepted whatever it says (marked unchecked; the alias's output guards
    # still apply after the cascade); a request error (400) is not escalated
    fake_openai.reply_text = fake_openai_2.reply_text = "I'm sorry, but I cannot help with that."
    resp, tid = call(client, model="answer", messages=user("x"))
    final = spans_by_kind(trace_of(s, tid), "llm")[0]["attributes"]["cascade"]["steps"][-1]
    assert final["outcome"] == "accepted_unchecked" and final["reason"] == "refusal"
    assert resp.choices[0].message.content == "I'm sorry, but I cannot help with that."
    fake_openai.fail_next(Fault("status", status=400))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="answer", messages=user("x"))


def test_cascade_escalates_on_low_confidence(serve: Any, fake_lp: LogprobFake, fake_openai_2: Any) -> None:
    fake_lp.reply_text, fake_openai_2.reply_text = "probably Lyon", "Paris"
    s = serve(cascade_config(fake_lp, fake_openai_2, min_confidence=0.8))
    client = client_for(s)
    fake_lp.logprob = -1.0  # exp(-1) = 0.37
    resp, tid = call(client, model="answer", messages=user("capital of France?"))
    assert resp.choices[0].message.content == "Paris"
    assert fake_lp.requests[-1]["json"]["logprobs"] is True  # asked for, for the confidence
    assert "logprobs" not in fake_openai_2.requests[-1]["json"]  # not from the last step
    step0 = spans_by_kind(trace_of(s, tid), "llm")[0]["attributes"]["cascade"]["steps"][0]
    assert step0["reason"] == "low confidence 0.368 < 0.8" and step0["confidence"] == pytest.approx(0.3679, abs=1e-3)
    fake_lp.logprob = -0.01
    resp, _ = call(client, model="answer", messages=user("capital of France?"))
    assert resp.choices[0].message.content == "probably Lyon" and resp.choices[0].logprobs is None  # not asked


# ---- pinning -----------------------------------------------------------------------------------------------
def test_floating_names_are_flagged_at_start_up(caplog: Any, fake_openai: Any) -> None:
    from shipyard.engine import Engine

    cfg = {"store": "none", "providers": providers(fake_openai),
           "models": {"chat": {"targets": [{"provider": "p", "model": "gpt-4o-mini"},
                                           {"provider": "p", "model": "claude-3-5-sonnet-latest"},
                                           {"provider": "p", "model": MINI}]}}}
    warnings = pinning.check(load_config(cfg))
    assert warnings == [
        ("models.chat.targets[0]: 'gpt-4o-mini' is a floating model name; pin 'gpt-4o-mini-2024-07-18' so "
         "behaviour cannot change under you"),
        ("models.chat.targets[1]: 'claude-3-5-sonnet-latest' is a floating model name; pin "
         "'claude-3-5-sonnet-20241022' so behaviour cannot change under you")]
    with caplog.at_level(logging.WARNING, logger="shipyard.releases"):
        Engine(cfg)
    assert "'gpt-4o-mini' is a floating model name" in caplog.text
    with pytest.raises(ConfigError) as exc:
        Engine({**cfg, "releases": {"pinning": "error"}})
    assert "unpinned models" in str(exc.value) and "models.chat.targets[1]" in str(exc.value)
    e = Engine({**cfg, "releases": {"rewrite_floating": True}})
    assert [t.model for t in e.routers["chat"].targets] == [MINI, "claude-3-5-sonnet-20241022", MINI]
    assert pinning.expected_report("gpt-4o-mini", MINI) and not pinning.expected_report(MINI, "gpt-4o-mini-2025-01-01")


def test_a_different_reported_model_is_recorded_and_warned(serve: Any, fake_lp: LogprobFake, caplog: Any) -> None:
    s = serve({"providers": providers(fake_lp),
               "models": {"pinned": fast_alias({"provider": "p", "model": MINI}),
                          "floating": fast_alias({"provider": "p", "model": "gpt-4o-mini"})}})
    client = client_for(s)
    _, tid = call(client, model="pinned", messages=user("x"))
    llm = spans_by_kind(trace_of(s, tid), "llm")[0]
    assert llm["attributes"]["model_version"] == MINI and "model_mismatch" not in llm["attributes"]
    fake_lp.report_model = "gpt-4o-mini-2025-02-02"
    with caplog.at_level(logging.WARNING, logger="shipyard.releases"):
        _, tid = call(client, model="pinned", messages=user("x"))
    llm = spans_by_kind(trace_of(s, tid), "llm")[0]
    assert llm["response_model"] == "gpt-4o-mini-2025-02-02"
    assert llm["attributes"]["model_mismatch"] == {"pinned": MINI, "reported": "gpt-4o-mini-2025-02-02"}
    assert f"pinned to '{MINI}' but the provider reported 'gpt-4o-mini-2025-02-02'" in caplog.text
    _, tid = call(client, model="floating", messages=user("x"))  # a floating name resolving to a dated one
    llm = spans_by_kind(trace_of(s, tid), "llm")[0]
    assert llm["attributes"]["model_version"] == "gpt-4o-mini-2025-02-02"
    assert llm["attributes"]["floating_model"] == "gpt-4o-mini" and "model_mismatch" not in llm["attributes"]
