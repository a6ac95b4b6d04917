"""Shadow traffic: candidates run beside production, never reach the client, never delay it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import client_for
from fakes import Fault
from test_releases_support import (
    call,
    create_prompt,
    fast_alias,
    http,
    providers,
    spans_by_kind,
    trace_of,
    wait_for,
)

from shipyard.releases import evaluators

MSG = [{"role": "user", "content": "What is the capital of France?"}]


def config(up: Any, up2: Any, up3: Any | None = None, **shadow: Any) -> dict[str, Any]:
    ups = (up, up2) + ((up3,) if up3 is not None else ())
    return {"providers": providers(*ups),
            "models": {"chat": fast_alias({"provider": "p", "model": "gpt-4o-mini-2024-07-18"}, shadow={
                "sample": 1.0, "candidates": [{"name": "new-model", "provider": "q",
                                               "model": "gpt-4.1-mini-2025-04-14"}], **shadow}),
                       "judge": fast_alias({"provider": "q", "model": "judge-model"})},
            "prices": {"gpt-4o-mini-2024-07-18": {"input": 0.15, "output": 0.6},
                       "gpt-4.1-mini-2025-04-14": {"input": 0.4, "output": 1.6}}}


def test_evaluators_compare_answers() -> None:
    c = evaluators.compare("Paris.", "  Paris. ", ["exact", "json", "similarity"])
    assert c["exact_match"] is True and c["json_equal"] is None and c["similarity"] == pytest.approx(1.0)
    j = evaluators.compare('{"a": 1, "b": [2]}', '```json\n{"b": [2], "a": 1}\n```', ["exact", "json"])
    assert j["exact_match"] is False and j["json_equal"] is True
    assert evaluators.compare('{"a": 1}', "not json", ["json"])["json_equal"] is False
    near = evaluators.compare("The capital of France is Paris.", "Paris is the capital of France.", ["similarity"])
    far = evaluators.compare("The capital of France is Paris.", "Bananas are yellow fruit.", ["similarity"])
    assert near["similarity"] > 0.5 > far["similarity"]
    assert evaluators.judge_score("Score: 8") == 0.8 and evaluators.judge_score("12") == 1.0
    assert evaluators.judge_score("no idea") is None


def test_shadow_never_reaches_the_client_and_never_delays_it(serve: Any, fake_openai: Any,
                                                             fake_openai_2: Any) -> None:
    fake_openai.reply_text, fake_openai_2.reply_text = "Paris.", "It is Paris."
    fake_openai_2.fail_next(Fault("delay", seconds=2.0))  # the candidate upstream is slow
    s = serve(config(fake_openai, fake_openai_2))
    pool = s.engine.releases.shadow["chat"]
    events: list[str] = []
    done = threading.Event()
    s.engine.releases.shadow_listeners.append(lambda rows: (events.append("shadow finished"), done.set()))

    resp, tid = call(client_for(s), model="chat", messages=MSG)
    events.append("client got its response")
    assert resp.choices[0].message.content == "Paris."  # production's answer, not the candidate's
    assert pool.stats()["completed"] == 0  # the shadow call was still running when the client was answered
    assert done.wait(15)
    assert events == ["client got its response", "shadow finished"]

    sent = fake_openai_2.requests[-1]["json"]
    assert sent["model"] == "gpt-4.1-mini-2025-04-14" and sent["messages"] == MSG and "stream" not in sent
    llm = spans_by_kind(trace_of(s, tid), "llm")[0]
    assert llm["attributes"]["shadow"] == {"sampled": True, "candidates": ["new-model"]}
    assert "It is Paris." not in str(llm["output"])
    with http(s) as h:
        rows = h.get("/api/shadow/results", params={"trace_id": tid}).json()["data"]
    (row,) = rows
    assert row["candidate"] == "new-model" and row["status"] == "ok" and row["span_id"] == llm["span_id"]
    assert row["output"] == "It is Paris." and row["prod_output"] == "Paris."
    assert row["exact_match"] == 0 and row["similarity"] > 0.2
    assert row["cost_usd"] == pytest.approx((11 * 0.4 + 7 * 1.6) / 1e6)
    assert row["prod_cost_usd"] == pytest.approx((11 * 0.15 + 7 * 0.6) / 1e6)
    assert row["latency_ms"] is not None and row["prod_latency_ms"] is not None


def test_streamed_requests_are_mirrored_after_the_stream_ends(serve: Any, fake_openai: Any,
                                                              fake_openai_2: Any) -> None:
    fake_openai.reply_text, fake_openai_2.reply_text = "one two three", "SECRET candidate text"
    fake_openai_2.fail_next(Fault("delay", seconds=2.0))
    s = serve(config(fake_openai, fake_openai_2))
    done = threading.Event()
    s.engine.releases.shadow_listeners.append(lambda rows: done.set())
    stream = client_for(s).chat.completions.create(model="chat", messages=MSG, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "one two three" and not done.is_set()
    assert done.wait(15)
    assert "stream" not in fake_openai_2.requests[-1]["json"]
    stats = s.engine.releases.shadow["chat"].stats()
    assert stats["completed"] == 1 and stats["candidate_errors"] == 0


def test_the_shadow_queue_is_bounded_and_drops_are_counted(serve: Any, fake_openai: Any,
                                                           fake_openai_2: Any) -> None:
    fake_openai_2.fail_next(Fault("delay", seconds=1.0), times=4)
    s = serve(config(fake_openai, fake_openai_2, max_concurrency=1, queue_size=1))
    client = client_for(s)
    for _ in range(4):
        assert call(client, model="chat", messages=MSG)[0].choices[0].message.content == "Hello from fake-openai"
    stats = s.engine.releases.shadow["chat"].stats()
    # one job running, one waiting, two dropped — nothing waited for room
    assert (stats["sampled"], stats["enqueued"], stats["dropped"]) == (4, 2, 2)
    assert stats["in_flight"] <= 1
    wait_for(lambda: s.engine.releases.shadow["chat"].stats()["completed"] == 2, what="the two queued jobs")


def test_judge_prompt_candidates_and_the_report(tmp_path: Path, serve: Any, fake_openai: Any, fake_openai_2: Any,
                                                capsys: Any) -> None:
    from shipyard.cli import main

    cfg = config(fake_openai, fake_openai_2, judge="judge")
    cfg["models"]["chat"]["shadow"]["candidates"].append({"name": "staging-prompt", "prompt_label": "staging"})
    cfg["store"] = f"sqlite:///{tmp_path}/shadow.db"
    # p answers production and the staging-prompt candidate (which runs on the alias's own target);
    # q answers the new-model candidate and the judge
    fake_openai.reply_queue = ['{"city": "Paris"}', '{"city": "Lyon"}'] * 3
    fake_openai_2.reply_queue = ['{"city":"Paris"}', "8", "3"] * 3
    s = serve(cfg)
    with http(s) as h:
        create_prompt(h, "geo", "chat", [{"role": "system", "content": "Answer as JSON about {{ topic }}."}],
                      labels=["production"])
        create_prompt(h, "geo", "chat", [{"role": "system", "content": "Reply in JSON; topic: {{ topic }}."}],
                      labels=["staging"])
    client = client_for(s)
    done = threading.Semaphore(0)
    s.engine.releases.shadow_listeners.append(lambda rows: done.release())
    for _ in range(3):
        resp, _ = call(client, model="prompt:geo", messages=MSG,
                       extra_body={"metadata": {"variables": {"topic": "cities"}}})
        assert resp.choices[0].message.content == '{"city": "Paris"}'
        assert done.acquire(timeout=15)  # one job at a time keeps the fakes' reply queues in order
    firsts = [r["json"]["messages"][0]["content"] for r in fake_openai.requests]
    assert firsts == ["Answer as JSON about cities.", "Reply in JSON; topic: cities."] * 3
    assert main(["shadow", "report", "--store", cfg["store"], "--json"]) == 0
    import orjson

    rows = {r["candidate"]: r for r in orjson.loads(capsys.readouterr().out)["data"]}
    new, staging = rows["new-model"], rows["staging-prompt"]
    assert new["n"] == 3 and new["errors"] == 0 and new["exact_rate"] == 0 and new["json_equal_rate"] == 1.0
    assert new["judge_score"] == pytest.approx(0.8)
    assert staging["json_equal_rate"] == 0.0 and staging["judge_score"] == pytest.approx(0.3)
    assert new["cost_n"] == 3 and new["cost_usd"] > new["prod_cost_usd"]
    assert main(["shadow", "report", "--store", cfg["store"]]) == 0
    out = capsys.readouterr().out
    assert "new-model" in out and "100.0%" in out and "staging-prompt" in out
