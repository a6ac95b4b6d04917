"""Evaluators (code assertions, judges, pairwise) and the statistics behind the reports."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from shipyard.errors import ConfigError
from shipyard.evals import stats
from shipyard.evals.calls import CallResult
from shipyard.evals.evaluators import Case, EvalContext, HashingEmbedder, build_evaluator, build_evaluators


def run(spec, output, *, expected=None, ctx=None, **case_kw):
    ev = build_evaluator(spec, "evaluators[0]", Path.cwd())
    case = Case(item={"id": "c", "input": {"variables": {"q": "Q?"}}, "expected": expected}, output=output, **case_kw)
    return asyncio.run(ev.evaluate(case, ctx or EvalContext()))


def test_string_assertions() -> None:
    assert run("equals", " Paris ", expected="Paris").passed
    out = run({"type": "equals", "value": "paris"}, "Paris")
    assert out.passed is False and "expected 'paris', got 'Paris'" in out.reason
    assert run({"type": "equals", "value": "paris", "ignore_case": True}, "Paris").passed
    assert run({"type": "equals", "json": True}, '```json\n{"a": [1, 2]}\n```', expected={"a": [1, 2]}).passed
    assert run("contains", "It is Paris.", expected="Paris").passed
    out = run({"type": "contains", "value": ["Paris", "France"]}, "Paris")
    assert not out.passed and "'France'" in out.reason
    assert run({"type": "contains", "value": ["x", "Paris"], "mode": "any"}, "Paris").passed
    assert run({"type": "not_contains", "value": "sorry", "ignore_case": True}, "Sorry!").passed is False
    assert run({"type": "regex", "pattern": r"\d{4}"}, "in 1999").passed
    assert run({"type": "regex", "pattern": r"\d+", "full": True}, "12a").passed is False
    assert run("contains", "x").error  # nothing to look for: an error, not a verdict


def test_structure_and_bounds() -> None:
    assert run("json", '{"a": 1}').passed and not run("json", "{a: 1}").passed
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    assert run({"type": "json_schema", "schema": schema}, '{"name": "x"}').passed
    out = run({"type": "json_schema", "schema": schema}, '{"name": 3}')
    assert not out.passed and "at name" in out.reason
    assert run({"type": "length", "max": 5}, "123456").passed is False
    assert run({"type": "length", "min": 2, "unit": "words"}, "one two").passed
    assert run({"type": "cost", "max_usd": 0.01}, "x", cost_usd=0.02).passed is False
    assert run({"type": "cost", "max_usd": 0.01}, "x").error  # unknown cost: neither pass nor fail
    assert run({"type": "latency", "max_ms": 100}, "x", latency_ms=50).passed


def test_similarity_with_the_hashing_embedder() -> None:
    emb = HashingEmbedder()
    same = asyncio.run(emb.similarity("The capital of France is Paris.", "the capital of france is paris"))
    close = asyncio.run(emb.similarity("The capital of France is Paris.", "Paris is the capital of France."))
    far = asyncio.run(emb.similarity("The capital of France is Paris.", "Bananas are yellow fruit."))
    assert same > 0.99 and close > 0.5 > far
    out = run({"type": "similarity", "threshold": 0.5}, "Paris is the capital of France.",
              expected="The capital of France is Paris.")
    assert out.passed and 0.5 < out.score < 1


def test_python_function(tmp_path: Path) -> None:
    (tmp_path / "checks.py").write_text(
        "def short(output):\n    return len(output) < 5\n"
        "def scored(output, case, scale=1.0):\n    return {'score': scale * len(output) / 10, 'reason': case.item['id']}\n"
        "async def boom(output):\n    raise RuntimeError('bad day')\n")
    evs = build_evaluators([{"type": "python", "function": "checks.py:short"},
                            {"type": "python", "name": "scored", "function": "checks.py:scored", "args": {"scale": 2}},
                            {"type": "python", "name": "boom", "function": "checks.py:boom"}], tmp_path)
    case = Case(item={"id": "c7", "input": {}}, output="abcdef")
    short, scored, boom = (asyncio.run(e.evaluate(case, EvalContext())) for e in evs)
    assert short.passed is False
    assert scored.passed and scored.score == pytest.approx(1.2) and scored.reason == "c7"
    assert boom.error and "RuntimeError: bad day" in boom.error
    with pytest.raises(ConfigError, match="cannot load"):
        build_evaluator({"type": "python", "function": "checks.py:nope"}, "e", tmp_path)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"evaluators\[0\].type: unknown evaluator type 'contain'"):
        build_evaluators([{"type": "contain"}], Path.cwd())
    with pytest.raises(ConfigError, match=r"evaluators\[1\].pattern: required key is missing"):
        build_evaluators(["json", {"type": "regex"}], Path.cwd())
    with pytest.raises(ConfigError, match=r"evaluators\[0\].colour: unknown key"):
        build_evaluators([{"type": "json", "colour": 1}], Path.cwd())
    with pytest.raises(ConfigError, match="two evaluators are named 'json'"):
        build_evaluators(["json", "json"], Path.cwd())


class ScriptedCaller:
    """Answers judge calls with scripted texts; records the prompts."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.calls: list[dict] = []

    async def chat(self, model, messages, params, **kw):
        self.calls.append({"model": model, "messages": messages, "params": params, **kw})
        return CallResult(text=self.replies.pop(0), cost_usd=0.001)


def test_judge_pass_fail_score_and_unparseable() -> None:
    caller = ScriptedCaller('{"reason": "names Paris", "pass": true}', 'Sure! {"score": 2, "reason": "vague"}',
                            "I think it is fine.", '{"score": 9}')
    ctx = EvalContext(caller=caller)
    out = run({"type": "judge", "model": "j", "rubric": "Names the capital"}, "Paris", expected="Paris", ctx=ctx)
    assert out.passed is True and out.reason == "names Paris" and out.cost_usd == 0.001
    prompt = caller.calls[0]["messages"][1]["content"]
    assert "Names the capital" in prompt and "Reference answer" in prompt and "Paris" in prompt
    assert caller.calls[0]["params"]["response_format"] == {"type": "json_object"}
    out = run({"type": "judge", "model": "j", "rubric": "r", "mode": "score"}, "Paris", ctx=ctx)
    assert out.passed is False and out.score == pytest.approx(0.25) and out.reason.startswith("2/5")
    out = run({"type": "judge", "model": "j", "rubric": "r"}, "Paris", ctx=ctx)
    assert out.passed is None and out.error and "no JSON object" in out.error  # an error, not a verdict
    out = run({"type": "judge", "model": "j", "rubric": "r", "mode": "score"}, "Paris", ctx=ctx)
    assert out.passed is None and "outside 1..5" in out.error


def test_pairwise_swaps_positions() -> None:
    ev = build_evaluator({"type": "pairwise", "model": "j"}, "e", Path.cwd())
    item = {"id": "c", "input": {"messages": [{"role": "user", "content": "hi"}]}}
    # consistent: B first, then (swapped) A -> b both times
    caller = ScriptedCaller('{"winner": "B"}', '{"winner": "A", "reason": "r"}')
    assert asyncio.run(ev.compare(item, "one", "two", EvalContext(caller=caller)))[0] == "b"
    # position bias: "A" both times -> a tie
    caller = ScriptedCaller('{"winner": "A"}', '{"winner": "A"}')
    assert asyncio.run(ev.compare(item, "one", "two", EvalContext(caller=caller)))[0] == "tie"
    caller = ScriptedCaller('{"winner": "C"}', '{"winner": "A"}')
    winner, _, err = asyncio.run(ev.compare(item, "one", "two", EvalContext(caller=caller)))
    assert winner is None and "not A, B or tie" in err


def test_wilson_and_t_intervals() -> None:
    lo, hi = stats.wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert stats.wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and stats.wilson(0, 0) is None
    assert stats.t_quantile(5) == 2.571
    assert stats.t_quantile(60) == pytest.approx(2.0003, abs=1e-3)
    assert stats.t_quantile(1000) == pytest.approx(1.9623, abs=1e-3)
    xs = [0.2, 0.4, 0.6, 0.8, 1.0]
    lo, hi = stats.t_interval(len(xs), sum(xs), sum(x * x for x in xs))
    half = 2.776 * math.sqrt(0.1 / 5)
    assert (lo, hi) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    blo, bhi = stats.bootstrap_interval(xs * 20)
    assert blo < 0.6 < bhi


def test_kappa_evalgen_pass_at_k_mcnemar() -> None:
    # 10 labels: tp 5, fp 1, tn 3, fn 1 -> po 0.8, pe 0.52
    pairs = [(True, True)] * 5 + [(False, True)] + [(False, False)] * 3 + [(True, False)]
    a = stats.agreement(pairs)
    assert a.agreement == pytest.approx(0.8) and a.kappa == pytest.approx(0.28 / 0.48)
    assert a.tpr == pytest.approx(5 / 6) and a.tnr == pytest.approx(0.75)
    assert a.coverage == pytest.approx(0.75) and a.false_failure_rate == pytest.approx(1 / 6)
    assert a.alignment == pytest.approx(2 * 0.75 * (5 / 6) / (0.75 + 5 / 6))
    lenient = stats.agreement([(True, True)] * 6 + [(False, True)] * 4)
    assert lenient.kappa == pytest.approx(0.0) and lenient.coverage == 0 and lenient.alignment == 0
    assert stats.pass_at_k(5, 1, 1) == pytest.approx(0.2) and stats.pass_at_k(5, 1, 5) == 1.0
    assert stats.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert stats.mcnemar_p(0, 0) is None and stats.mcnemar_p(5, 5) == 1.0
    assert stats.mcnemar_p(10, 0) == pytest.approx(2 / 1024)


def test_judge_reply_json_is_tolerant_but_strict_on_meaning() -> None:
    from shipyard.evals.evaluators import JudgeReplyError, parse_pass_fail

    assert parse_pass_fail('```json\n{"pass": "PASS", "reason": "ok"}\n```') == (True, "ok")
    assert parse_pass_fail(json.dumps({"verdict": "fail"}))[0] is False
    with pytest.raises(JudgeReplyError):
        parse_pass_fail('{"pass": "maybe"}')
