"""Drift analysis on synthetic support-bot traffic with known injected shifts.

Real SQLite stores: the reference dataset goes through shipyard.evals.datasets, production
windows are llm spans written with store.write_spans (or recorded by the gateway). Each
shift (a new topic, a format change, a length change) must be found where it is, and
traffic without a shift must not be flagged.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "drift"))

import synth  # noqa: E402

from shipyard.drift import parse_spec, run_analysis  # noqa: E402
from shipyard.drift.report import render_html  # noqa: E402
from shipyard.errors import InvalidRequest, NotFound  # noqa: E402
from shipyard.evals.datasets import Datasets  # noqa: E402
from shipyard.store import open_store  # noqa: E402
from shipyard.tracing.span import Span, new_span_id, new_trace_id  # noqa: E402

DAY = 86400.0
N_REF = 400
N_CUR = 400
CRYPTO_WORDS = ("bitcoin", "ethereum", "solana", "dogecoin", "altcoin", "staking", "crypto", "halving")


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/drift.db")
    yield s
    s.close()


def scenario(store: Any, now: float, *, n_cur: int = N_CUR, n_ref: int = N_REF, past: bool = True,
             **shift: Any) -> None:
    """Reference dataset 'support' (+ a past window 30d..8d ago) and a current window (last 7
    days) with ``shift`` applied (see bench/drift/synth.py)."""
    Datasets(store).create("support", synth.dataset_items(synth.make_records(n_ref, seed=1)))
    if past:
        synth.write_window(store, synth.make_records(n_ref, seed=2), now - 30 * DAY, now - 8 * DAY)
    if n_cur:
        synth.write_window(store, synth.make_records(n_cur, seed=3, **shift), now - 7 * DAY + 1, now - 60)


def checks(summary: dict[str, Any], side: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in summary["structural"][side]}


def analyze(store: Any, now: float, reference: str = "dataset:support", current: str = "7d", **kw: Any):
    return run_analysis(store, reference, current, now=now, **kw)


# ---- no shift ----------------------------------------------------------------------------
def test_traffic_without_a_shift_is_not_flagged(store):
    now = time.time()
    scenario(store, now)
    s = analyze(store, now)
    assert s["verdict"] == "no drift", s["drifted"]
    assert s["drifted"] == []
    assert s["reference"]["records"] == N_REF and s["current"]["records"] == N_CUR
    out = checks(s, "output")
    assert out["json_valid"]["test"] == "chi2" and out["chars"]["test"] == "ks"  # small samples
    assert out["schema_adherence"]["shares"]["true"]["current"] == 1.0
    assert s["schema"] and "answer" in s["schema"] and "category" in s["schema"]
    for side in ("input", "output"):
        sem = s["semantic"][side]
        assert sem["domain_classifier"]["statistic"] < 0.6
        assert sem["topics"]["verdict"] == "no drift"
        assert not [c for c in sem["topics"]["clusters"] if c["status"] in ("new", "grown")]
    # latency and cost of the dataset come from its items' metadata
    assert checks(s, "call")["latency_ms"]["verdict"] == "no drift"
    # quality signals degrade cleanly when there are none
    assert s["quality"]["judge_scores"]["verdict"] == "no data"
    assert s["quality"]["feedback"]["verdict"] == "no data"


def test_a_past_window_as_reference_without_a_shift(store):
    now = time.time()
    scenario(store, now)
    s = analyze(store, now, reference="window:30d..7d")
    assert s["reference"]["kind"] == "window" and s["reference"]["records"] == N_REF
    assert s["verdict"] == "no drift", s["drifted"]


# ---- injected shifts -----------------------------------------------------------------------
def test_a_new_topic_is_found_and_listed_with_example_inputs(store):
    now = time.time()
    scenario(store, now, new_topic=0.2)
    s = analyze(store, now)
    assert s["verdict"] == "drift"
    assert "semantic.input.topics" in s["drifted"]
    topics = s["semantic"]["input"]["topics"]
    new = [c for c in topics["clusters"] if c["status"] == "new"]
    assert new, topics["clusters"]
    assert topics["new_share"] >= 0.1
    for c in new:
        assert c["reference_share"] <= 0.01 and c["current_share"] > 0
        assert c["examples"], c
        # a person can read what the new topic is about
        assert all(any(w in e.lower() for w in CRYPTO_WORDS) for e in c["examples"]), c["examples"]
        assert any(w in CRYPTO_WORDS or w in ("savings", "retirement", "leverage", "price", "predict",
                                              "outperform", "futures", "fund", "trading")
                   for w in c["keywords"]), c["keywords"]
    # no structural format drift was injected
    assert "output.json_valid" not in s["drifted"] and "output.schema_adherence" not in s["drifted"]


def test_a_format_change_is_found_in_outputs_not_inputs(store):
    now = time.time()
    scenario(store, now, output_format="markdown")
    s = analyze(store, now)
    assert s["verdict"] == "drift"
    for name in ("output.json_valid", "output.schema_adherence", "semantic.output.domain_classifier"):
        assert name in s["drifted"], (name, s["drifted"])
    out = checks(s, "output")
    assert out["json_valid"]["shares"]["false"]["current"] == 1.0
    assert out["schema_adherence"]["shares"]["true"]["reference"] == 1.0
    assert not [d for d in s["drifted"] if d.startswith("input.") or d.startswith("semantic.input")]
    assert s["semantic"]["output"]["domain_classifier"]["statistic"] > 0.9


def test_a_length_change_is_found_in_outputs_not_inputs(store):
    now = time.time()
    scenario(store, now, length_factor=3.0)
    s = analyze(store, now)
    assert s["verdict"] == "drift"
    assert {"output.chars", "output.tokens", "call.cost_usd"} <= set(s["drifted"])
    assert not [d for d in s["drifted"] if d.startswith("input.")]
    out = checks(s, "output")["chars"]
    assert out["current"]["p50"] > 2 * out["reference"]["p50"]
    assert checks(s, "input")["chars"]["verdict"] == "no drift"


def test_large_samples_are_judged_by_distances_not_p_values(store):
    now = time.time()
    scenario(store, now, length_factor=3.0, n_ref=1200, n_cur=1200, past=False)
    s = analyze(store, now, semantic=False)  # both sides above small_sample_max (1000)
    out = checks(s, "output")
    assert out["chars"]["test"] == "wasserstein" and out["chars"]["verdict"] == "drift"
    assert out["chars"]["statistic"] > 1.0 and out["chars"]["p_value"] is None
    assert out["json_valid"]["test"] == "jensen_shannon" and out["json_valid"]["verdict"] == "no drift"
    assert checks(s, "input")["chars"]["test"] == "wasserstein"
    assert checks(s, "input")["chars"]["verdict"] == "no drift"


def test_large_samples_without_a_shift_stay_quiet(store):
    now = time.time()
    scenario(store, now, n_ref=1200, n_cur=1200, past=False)
    s = analyze(store, now, semantic=False)
    assert s["verdict"] == "no drift", [(c["side"], c["name"], c["statistic"]) for side in s["structural"].values()
                                        for c in side if c["verdict"] == "drift"]
    assert s["semantic"]["verdict"] == "skipped"


# ---- bad input -----------------------------------------------------------------------------
def test_an_empty_window_gets_not_enough_data_instead_of_a_statistic(store):
    now = time.time()
    scenario(store, now, n_cur=0)
    s = analyze(store, now)
    assert s["verdict"] == "not enough data"
    assert "not enough data" in s["reason"] and "0" in s["reason"]
    for side in ("input", "output", "call"):
        for c in s["structural"][side]:
            assert c["verdict"] == "not enough data", c
            assert c["statistic"] is None and c["p_value"] is None
            assert "not enough data" in c["reason"]
    for side in ("input", "output"):
        assert s["semantic"][side]["verdict"] == "not enough data"
        assert s["semantic"][side]["domain_classifier"]["statistic"] is None
    html = render_html(s)
    assert "not enough data" in html


def test_a_tiny_window_gets_not_enough_data(store):
    now = time.time()
    scenario(store, now, n_cur=12, new_topic=0.5)
    s = analyze(store, now)
    assert s["current"]["records"] == 12
    assert s["verdict"] == "not enough data"
    assert all(c["verdict"] == "not enough data" for c in s["structural"]["output"])
    # a lower minimum makes the same window analysable
    s2 = analyze(store, now, thresholds={"min_samples": 10})
    assert s2["verdict"] in ("drift", "no drift")
    assert all(c["statistic"] is not None for c in s2["structural"]["input"] if c["name"] == "chars")


def test_unknown_dataset_and_bad_specs_are_clear_errors(store):
    now = time.time()
    scenario(store, now, n_cur=0, past=False)
    with pytest.raises(NotFound, match="nope"):
        analyze(store, now, reference="dataset:nope")
    with pytest.raises(InvalidRequest, match="empty"):
        analyze(store, now, reference="window:7d..30d")
    with pytest.raises(InvalidRequest, match="duration"):
        analyze(store, now, current="lastweek")
    with pytest.raises(ValueError, match="unknown drift threshold"):
        analyze(store, now, thresholds={"auc": 0.7})


def test_spec_parsing():
    now = 1_000_000.0
    s = parse_spec("window:30d..7d", now=now)
    assert (s.start, s.end) == (now - 30 * DAY, now - 7 * DAY)
    s = parse_spec("24h", now=now)
    assert (s.start, s.end) == (now - DAY, now)
    s = parse_spec("dataset:faq@3:holdout")
    assert (s.kind, s.name, s.version, s.split) == ("dataset", "faq", 3, "holdout")
    s = parse_spec("window:2025-01-01..2025-01-08")
    assert s.end - s.start == 7 * DAY
    with pytest.raises(InvalidRequest):
        parse_spec("dataset:faq@x")
    with pytest.raises(InvalidRequest):
        parse_spec("")


# ---- what a window holds ---------------------------------------------------------------------
def _span(t: float, question: str, answer: str, attributes: dict[str, Any]) -> Span:
    return Span(trace_id=new_trace_id(), span_id=new_span_id(), name="chat support", kind="llm", start_time=t,
                end_time=t + 0.3, input=synth.request_body(question), output=synth.completion(answer),
                alias="support", attributes=attributes)


def test_probe_and_eval_run_calls_are_not_production(store):
    now = time.time()
    scenario(store, now)
    noise = [_span(now - DAY - i, "Should I buy dogecoin futures?", "no", {"metadata": {"drift_probe": True}})
             for i in range(100)]
    noise += [_span(now - DAY - 200 - i, "Should I buy dogecoin futures?", "no", {"eval_run": "run-1"})
              for i in range(100)]
    store.write_spans(noise, synth.dump)
    s = analyze(store, now, semantic=False)
    assert s["current"]["records"] == N_CUR
    assert s["verdict"] == "no drift"


def test_alias_filter_and_errors_without_output(store):
    now = time.time()
    scenario(store, now)
    other = synth.spans(synth.make_records(50, seed=9, output_format="markdown"), now - 3 * DAY, now - 2 * DAY,
                        alias="other")
    failed = synth.spans(synth.make_records(50, seed=10), now - 2 * DAY, now - DAY)
    for sp in failed:
        sp.status, sp.error, sp.output = "error", "upstream 500", None
    store.write_spans(other + failed, synth.dump)
    s = analyze(store, now, alias="support", semantic=False)
    assert s["current"]["records"] == N_CUR + 50 and s["current"]["outputs"] == N_CUR
    assert s["current"]["alias"] == "support"
    assert "output.json_valid" not in s["drifted"]


# ---- judge scores and feedback ----------------------------------------------------------------
def _judge(t: float, score: float) -> Span:
    return Span(trace_id=new_trace_id(), span_id=new_span_id(), name="helpfulness", kind="evaluator", start_time=t,
                end_time=t + 0.1, attributes={"score": score, "evaluator": "helpfulness"})


def test_judge_scores_and_feedback_rates_drift_across_windows(store):
    now = time.time()
    scenario(store, now)
    store.write_spans([_judge(now - 20 * DAY + i, 0.8 + (i % 5) * 0.04) for i in range(120)], synth.dump)
    store.write_spans([_judge(now - 3 * DAY + i, 0.3 + (i % 5) * 0.04) for i in range(120)], synth.dump)
    s = analyze(store, now, reference="window:30d..7d", semantic=False)
    judges = s["quality"]["judge_scores"]
    assert judges["verdict"] == "drift"
    assert judges["checks"][0]["name"] == "judge:helpfulness"
    assert "quality.judge:helpfulness" in s["drifted"]
    assert s["quality"]["feedback"]["verdict"] == "no data"
    assert "no feedback" in s["quality"]["feedback"]["reason"]

    # feedback in the feedback feature's own table (sentiment +1/-1, timed by its trace)
    import shipyard.feedback.schema  # noqa: F401  (registers the feedback tables)

    store.migrate()
    with store._write() as cur:
        rows = [(f"a{i}", "h", f"t{i}", "thumbs", 1, "end_user", now - 20 * DAY + i, int(now - 20 * DAY + i), now)
                for i in range(40)]
        rows += [(f"b{i}", "h", f"u{i}", "thumbs", -1 if i % 2 else 1, "end_user", now - 3 * DAY + i,
                  int(now - 3 * DAY + i), now) for i in range(200)]
        cur.executemany(store.dialect.q(
            "INSERT INTO feedback (feedback_id, request_hash, trace_id, kind, sentiment, source, trace_time, "
            "trace_ts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"), rows)
    s = analyze(store, now, reference="window:30d..7d", semantic=False)
    fb = s["quality"]["feedback"]
    assert fb["reference"]["feedback"] == 40 and fb["current"]["feedback"] == 200
    names = {c["name"]: c for c in fb["checks"]}
    assert names["feedback_rate"]["verdict"] == "drift"
    assert names["feedback_positive"]["verdict"] == "drift"
    # a dataset reference has no production feedback: "no data", not an error
    s = analyze(store, now, semantic=False)
    assert s["quality"]["feedback"]["verdict"] == "no data"


# ---- report -------------------------------------------------------------------------------------
def test_html_report_is_self_contained_and_escapes_recorded_text(store, tmp_path):
    now = time.time()
    scenario(store, now, new_topic=0.3)
    evil = [_span(now - DAY - i, "<script>alert('x')</script> bitcoin <img src=x onerror=alert(1)>",
                  '{"answer": "</textarea><script>alert(2)</script>"}', {}) for i in range(30)]
    store.write_spans(evil, synth.dump)
    s = analyze(store, now)
    html = render_html(s)
    assert "<script" not in html.lower().replace("&lt;script", "")
    assert "onerror=alert" not in html or "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;script&gt;alert(" in html
    for attr in ("src=\"http", "href=\"http", "src='http", "@import", "url(http"):
        assert attr not in html
    assert html.count("<svg") > 10
    assert 'data-status="new"' in html
    # the JSON summary round-trips
    assert orjson.loads(orjson.dumps(s))["verdict"] == "drift"


def test_light_embedder_is_deterministic():
    from shipyard.drift.embedders import get_embedder

    texts = [r["question"] for r in synth.make_records(80, seed=4)]
    a = get_embedder("light").embed(texts)
    b = get_embedder("light").embed(texts)
    assert a.shape[0] == 80 and (a == b).all()
    assert abs(float((a * a).sum(axis=1).mean()) - 1.0) < 1e-4


def test_missing_embedder_dependency_names_the_extra(monkeypatch):
    from shipyard.drift import embedders
    from shipyard.drift.deps import MissingDependency

    monkeypatch.setattr(embedders, "_MINILM", None)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    with pytest.raises(MissingDependency) as exc:
        embedders.get_embedder("minilm")
    msg = str(exc.value)
    assert "shipyard[embeddings]" in msg and "torch==2.13.0" in msg and "sentence_transformers" in msg
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingDependency, match=r"shipyard\[drift\]"):
        embedders.get_embedder("light")
    with pytest.raises(InvalidRequest, match="Unknown embedder"):
        embedders.get_embedder("nonsense")


# ---- CLI ----------------------------------------------------------------------------------------
def test_cli_report_writes_html_and_json(store, tmp_path, capsys):
    from shipyard.cli import main

    now = time.time()
    scenario(store, now, output_format="markdown")
    url = f"sqlite:///{tmp_path}/drift.db"
    out = tmp_path / "rep" / "drift.html"
    rc = main(["drift", "report", "--store", url, "--reference", "dataset:support", "--current", "7d",
               "--out", str(out), "--threshold", "domain_auc=0.8", "--max-semantic", "300", "--fail-on-drift"])
    assert rc == 1
    printed = capsys.readouterr().out
    assert printed.startswith("drift: dataset:support (400 records) vs 7d (400 records)")
    assert "output.json_valid" in printed
    summary = orjson.loads((tmp_path / "rep" / "drift.json").read_text())
    assert summary["thresholds"]["domain_auc"] == 0.8
    assert summary["semantic"]["sampled"] == {"reference": 300, "current": 300}
    assert any("uniform random sample" in n for n in summary["notes"])
    assert out.read_text().startswith("<!doctype html>")
    rc = main(["drift", "report", "--store", url, "--reference", "window:30d..7d", "--out", str(tmp_path / "b.html"),
               "--no-semantic"])
    assert rc == 0
    rc = main(["drift", "report", "--store", url, "--reference", "dataset:missing", "--out", str(tmp_path / "c.html")])
    assert rc == 2
    assert "missing" in capsys.readouterr().err
