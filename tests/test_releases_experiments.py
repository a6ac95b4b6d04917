"""A/B experiments: sticky hashing, weights, start-up validation, traces, reports, Thompson sampling."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import openai
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

from shipyard.config import load_config
from shipyard.errors import ConfigError
from shipyard.releases.config import ExperimentConfig
from shipyard.releases.experiments import (
    Assigner,
    bootstrap_diff,
    outcome_counts,
    thompson_weights,
    two_proportion_z,
)

MSG = [{"role": "user", "content": "hello"}]


def experiment(**kw: Any) -> dict[str, Any]:
    return {"name": "answer-v2", "variants": [{"name": "control", "weight": 50},
                                              {"name": "treatment", "weight": 50, "provider": "q",
                                               "model": "gpt-4.1-mini-2025-04-14"}], **kw}


def config(up: Any, up2: Any, **exp: Any) -> dict[str, Any]:
    return {"providers": providers(up, up2), "feedback": {"allow_anonymous": True},
            "models": {"chat": fast_alias({"provider": "p", "model": "gpt-4o-mini-2024-07-18"},
                                          experiment=experiment(**exp)),
                       "other": fast_alias({"provider": "q", "model": "gpt-4o-2024-08-06"})}}


# ---- assignment ------------------------------------------------------------------------------------
def test_assignment_is_sticky_and_deterministic() -> None:
    cfg = ExperimentConfig.model_validate(experiment())
    a, b = Assigner("chat", cfg), Assigner("chat", cfg)  # two processes, say
    users = [f"user-{i}" for i in range(500)]
    first = [a.assign(u) for u in users]
    assert all(sticky for _, sticky in first)
    assert first == [a.assign(u) for u in users] == [b.assign(u) for u in users]
    other = Assigner("chat", ExperimentConfig.model_validate(experiment(name="another-test")))
    assert [other.assign(u)[0] for u in users] != [v for v, _ in first]  # experiments hash independently
    variant, sticky = a.assign(None)
    assert variant in ("control", "treatment") and sticky is False


def test_weights_hold_within_statistical_tolerance() -> None:
    cfg = ExperimentConfig.model_validate({"name": "three-way", "variants": [
        {"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.3}, {"name": "c", "weight": 0.2}]})
    a = Assigner("chat", cfg)
    n = 10_000
    counts = {"a": 0, "b": 0, "c": 0}
    for i in range(n):
        counts[a.assign(f"u{i}")[0]] += 1
    expected = {"a": 0.5 * n, "b": 0.3 * n, "c": 0.2 * n}
    chi2 = sum((counts[k] - expected[k]) ** 2 / expected[k] for k in counts)
    assert chi2 < 13.816, (counts, chi2)  # chi-squared, 2 degrees of freedom, p = 0.001


@pytest.mark.parametrize("variants, text", [
    ([{"name": "a", "weight": 50}, {"name": "b", "weight": 40}], "weights sum to 90"),
    ([{"name": "a", "weight": 0.7}, {"name": "b", "weight": 0.7}], "weights sum to 1.4"),
    ([{"name": "a", "weight": 0}, {"name": "b", "weight": 0}], "every weight is 0"),
    ([{"name": "a", "weight": -1}, {"name": "b", "weight": 101}], "greater than or equal to 0"),
    ([{"name": "a", "weight": 50}, {"name": "a", "weight": 50}], "duplicate variant name 'a'"),
])
def test_weights_that_do_not_sum_sensibly_stop_start_up(variants: list[dict[str, Any]], text: str) -> None:
    cfg = {"providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
           "models": {"chat": {"targets": [{"provider": "p", "model": "m"}],
                               "experiment": {"name": "e", "variants": variants}}}}
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    assert "models.chat.experiment" in str(exc.value) and text in str(exc.value)


def test_variants_must_name_configured_aliases_and_providers() -> None:
    cfg = {"providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
           "models": {"chat": {"targets": [{"provider": "p", "model": "m"}], "experiment": {
               "name": "e", "variants": [{"name": "a", "weight": 1, "alias": "missing"},
                                         {"name": "b", "weight": 0, "provider": "nope", "model": "x"}]}}}}
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    msg = str(exc.value)
    assert "models.chat.experiment.variants[0].alias: unknown model alias 'missing'" in msg
    assert "models.chat.experiment.variants[1].provider: unknown provider 'nope'" in msg


# ---- statistics ----------------------------------------------------------------------------------
def test_two_proportion_z_and_bootstrap() -> None:
    r = two_proportion_z(50, 100, 65, 100)
    assert r["diff"] == 0.15
    assert r["z"] == pytest.approx(2.1448, abs=1e-3)
    assert r["p_value"] == pytest.approx(0.03197, abs=1e-3)
    assert r["ci95"][0] < 0.15 < r["ci95"][1]
    assert two_proportion_z(0, 0, 1, 2)["p_value"] is None
    rng = random.Random(1)
    control = [rng.gauss(0.5, 0.1) for _ in range(400)]
    better = [rng.gauss(0.6, 0.1) for _ in range(400)]
    b = bootstrap_diff(control, better)
    assert b["significant"] and b["ci95"][0] > 0.05
    assert not bootstrap_diff(control, [rng.gauss(0.5, 0.1) for _ in range(400)])["significant"]


def test_thompson_sampling_shifts_traffic_to_the_winner() -> None:
    names = ["control", "treatment"]
    w = thompson_weights({"control": (20, 80), "treatment": (70, 30)}, names, 0.05, rng=random.Random(3))
    assert w["treatment"] > 0.9 and w["control"] == pytest.approx(0.05, abs=0.01)
    even = thompson_weights({}, names, 0.05, rng=random.Random(3))
    assert 0.35 < even["control"] < 0.65

    cfg = ExperimentConfig.model_validate(experiment(mode="thompson", update_interval_s=0.001))
    a = Assigner("chat", cfg)
    for _ in range(60):
        a.observe("control", False)
        a.observe("treatment", True)
    a.update_weights()
    assert a.current_weights()["treatment"] > 0.9
    picks = [a.assign(f"new-user-{i}")[0] for i in range(1000)]
    assert picks.count("treatment") > 850
    assert a.assign("new-user-1")[0] == picks[1]  # once assigned, a unit stays put


def test_thompson_learns_from_the_experiments_metric() -> None:
    class Outcomes:  # what the release store answers for this experiment
        def success_counts(self, name: str, since: float) -> dict[str, tuple[int, int]]:
            return {"control": (50, 0), "treatment": (50, 0)}  # every call succeeded...

        def evaluator_outcomes(self, name: str, start: float, end: float) -> list[tuple[str, Any, Any]]:
            return ([("control", None, False)] * 30 + [("control", 0.9, None)] * 5 + [("control", None, None)]
                    + [("treatment", 0.2, None)] * 2 + [("treatment", None, True)] * 33)

        def feedback_outcomes(self, name: str, start: float, end: float) -> list[tuple[str, float]]:
            return [("control", 0.0)] * 20 + [("treatment", 1.0)] * 18 + [("treatment", 0.25)] * 2

    rs = Outcomes()
    by = {m: outcome_counts(ExperimentConfig.model_validate(experiment(mode="thompson", metric=m)), rs, 0, 1)
          for m in ("success", "evaluator", "feedback")}
    assert by["success"] == {"control": (50, 0), "treatment": (50, 0)}
    assert by["evaluator"] == {"control": (5, 30), "treatment": (33, 2)}  # no verdict nor score: not counted
    assert by["feedback"] == {"control": (0, 20), "treatment": (18, 2)}
    for m in ("evaluator", "feedback"):  # ...but the answers were worse: traffic moves on the metric
        a = Assigner("chat", ExperimentConfig.model_validate(experiment(mode="thompson", metric=m)))
        for _ in range(100):
            a.observe("control", True)  # call success does not count for these metrics
        assert a.counts == {"control": [0, 0], "treatment": [0, 0]}
        a.seed = by[m]
        a.update_weights()
        assert a.current_weights()["treatment"] > 0.9


# ---- through the gateway --------------------------------------------------------------------------
def test_users_stick_to_their_variant_and_traces_name_it(serve: Any, fake_openai: Any, fake_openai_2: Any) -> None:
    fake_openai.reply_text, fake_openai_2.reply_text = "from control", "from treatment"
    s = serve(config(fake_openai, fake_openai_2))
    client = client_for(s)
    seen: dict[str, set[str]] = {}
    trace_ids = []
    for _ in range(3):
        for i in range(12):
            resp, tid = call(client, model="chat", messages=MSG, user=f"user-{i}")
            seen.setdefault(f"user-{i}", set()).add(resp.choices[0].message.content)
            trace_ids.append(tid)
    assert all(len(v) == 1 for v in seen.values())  # sticky
    assert {next(iter(v)) for v in seen.values()} == {"from control", "from treatment"}

    trace = trace_of(s, trace_ids[0])
    (llm,) = spans_by_kind(trace, "llm")
    exp = llm["attributes"]["experiment"]
    assert exp["name"] == "answer-v2" and exp["variant"] in ("control", "treatment") and exp["sticky"] is True
    assert llm["model"] == ("gpt-4o-mini-2024-07-18" if exp["variant"] == "control" else "gpt-4.1-mini-2025-04-14")
    (router,) = spans_by_kind(trace, "router")
    assert router["parent_id"] == llm["span_id"]
    assert router["attributes"]["experiment"]["variant"] == exp["variant"]
    assert router["attributes"]["experiment"]["weights"] == {"control": 0.5, "treatment": 0.5}

    fake_openai_2.fail_next(Fault("status", status=500), times=10)
    treated = next(u for u, v in seen.items() if v == {"from treatment"})
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="chat", messages=MSG, user=treated)
    s.flush()
    with http(s) as h:
        def ready() -> Any:
            rep = h.get("/api/experiments/answer-v2").json()
            return rep if sum(v["exposures"] for v in rep["variants"]) == 37 else None

        rep = wait_for(ready, what="exposures written")
        by = {v["name"]: v for v in rep["variants"]}
        assert by["treatment"]["exposures"] + by["control"]["exposures"] == 37
        assert by["treatment"]["successes"] == by["treatment"]["exposures"] - 1
        assert by["control"]["success_rate"] == 1.0
        assert by["control"]["units"] + by["treatment"]["units"] == 12
        (cmp,) = rep["comparisons"]
        assert cmp["test"] == "two-proportion z" and cmp["variant"] == "treatment" and cmp["p_value"] is not None

        # feedback (docs/feedback.md) on the exposed traces: thumbs up for control, down for treatment
        variant_of = {}
        for tid in trace_ids[:12]:
            variant_of[tid] = spans_by_kind(trace_of(s, tid), "llm")[0]["attributes"]["experiment"]["variant"]
            r = h.post("/api/feedback", json={"trace_id": tid, "kind": "thumbs",
                                              "value": "up" if variant_of[tid] == "control" else "down"})
            assert r.status_code == 201, r.text
        rep = h.get("/api/experiments/answer-v2").json()
        assert rep["feedback_available"] is True
        fb = {v["name"]: v["feedback"] for v in rep["variants"]}
        n_control = sum(1 for v in variant_of.values() if v == "control")
        assert fb["control"] == {"n": n_control, "mean": 1.0}
        assert fb["treatment"] == {"n": 12 - n_control, "mean": 0.0}
        listed = h.get("/api/experiments").json()["data"]
        assert listed[0]["weights"] == {"control": 0.5, "treatment": 0.5}
        assert h.get("/api/experiments/nope").status_code == 404


def test_a_variant_can_run_another_prompt_version(serve: Any, fake_openai: Any, fake_openai_2: Any) -> None:
    cfg = config(fake_openai, fake_openai_2)
    cfg["models"]["chat"]["experiment"] = {"name": "prompt-test", "unit": "session", "variants": [
        {"name": "prod", "weight": 50}, {"name": "staged", "weight": 50, "prompt_label": "staging"}]}
    s = serve(cfg)
    with http(s) as h:
        create_prompt(h, "greet", "chat", [{"role": "system", "content": "v1 for {{ who }}"}], labels=["production"])
        create_prompt(h, "greet", "chat", [{"role": "system", "content": "v2 for {{ who }}"}], labels=["staging"])
    client = client_for(s)
    by_variant: dict[str, set[str]] = {}
    for i in range(16):
        _, tid = call(client, model="prompt:greet", messages=MSG,
                      extra_body={"metadata": {"session_id": f"s{i}", "variables": {"who": "Al"}}})
        sent = fake_openai.requests[-1]["json"]["messages"][0]["content"]
        llm = spans_by_kind(trace_of(s, tid), "llm")[0]
        variant = llm["attributes"]["experiment"]["variant"]
        assert llm["attributes"]["experiment"]["unit"] == "session"
        assert llm["attributes"]["prompt"]["version"] == (2 if variant == "staged" else 1)
        by_variant.setdefault(variant, set()).add(sent)
    assert by_variant == {"prod": {"v1 for Al"}, "staged": {"v2 for Al"}}
    # a plain (non-prompt) request cannot take a prompt variant: it is simply not in the experiment
    _, tid = call(client, model="chat", messages=MSG, extra_body={"metadata": {"session_id": "s1"}})
    llm = spans_by_kind(trace_of(s, tid), "llm")[0]
    assert "experiment" not in llm["attributes"] or llm["attributes"]["experiment"]["variant"] == "prod"


def test_cli_lists_and_reports_experiments(tmp_path: Path, serve: Any, fake_openai: Any, fake_openai_2: Any,
                                           capsys: Any) -> None:
    import yaml

    from shipyard.cli import main

    cfg = config(fake_openai, fake_openai_2)
    cfg["store"] = f"sqlite:///{tmp_path}/exp.db"
    path = tmp_path / "shipyard.yaml"
    path.write_text(yaml.safe_dump(cfg))
    s = serve(cfg)
    client = client_for(s)
    for i in range(20):
        call(client, model="chat", messages=MSG, user=f"u{i}")
    s.flush()
    wait_for(lambda: s.engine.recorder.stats()["queue_depth"] == 0)
    assert main(["experiments", "list", "--config", str(path)]) == 0
    assert "answer-v2  (alias chat, fixed, unit user, metric success): control=50%, treatment=50%" in \
        capsys.readouterr().out
    assert main(["experiments", "report", "answer-v2", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "experiment answer-v2 on alias chat" in out and "treatment vs control (two-proportion z)" in out
    assert "FEEDBACK" in out
    assert main(["experiments", "report", "nope", "--config", str(path)]) == 1
