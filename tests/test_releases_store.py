"""The release tables on every SQL backend: SQLite and a real PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import drop_postgres_database, new_postgres_database

import shipyard.feedback.schema  # noqa: F401  (the feedback table, as the server has it)
from shipyard.errors import NotFound
from shipyard.releases.config import ExperimentConfig, PromptsConfig
from shipyard.releases.experiments import report
from shipyard.releases.registry import Conflict, Registry
from shipyard.releases.store import ReleaseStore
from shipyard.store import open_store
from shipyard.tracing.span import Span, new_span_id

MSGS = [{"role": "system", "content": "Hi {{ who }}"}]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/r.db")
        yield s
        s.close()
        return
    db = new_postgres_database(request.getfixturevalue("postgres_url"))
    s = open_store(db)
    yield s
    s.close()
    drop_postgres_database(db)


def test_versions_labels_and_audit(store: Any) -> None:
    reg = Registry(ReleaseStore(store), PromptsConfig())
    v1 = reg.create_version("p", {"model": "chat", "messages": MSGS, "labels": ["production"],
                                  "description": "greeter"}, "ann")
    v2 = reg.create_version("p", {"model": "chat", "messages": MSGS, "params": {"temperature": 0.3},
                                  "response_schema": {"type": "object"}}, "bob")
    assert (v1.version, v2.version) == (1, 2)
    got = reg.version("p", 2)
    assert got.params == {"temperature": 0.3} and got.response_schema == {"type": "object"}
    assert got.variables == ["who"] and got.created_by == "bob"
    assert reg.version("p").version == 1  # the default label
    with pytest.raises(Conflict):
        reg.set_label("p", "production", 2, "eve")
    reg.set_label("p", "production", 2, "eve", force=True)
    reg.set_label("p", "staging", 1, "eve")
    info = reg.get("p")
    assert info["description"] == "greeter" and info["latest"] == 2 and info["versions"] == 2
    assert {k: v["version"] for k, v in info["labels"].items()} == {"production": 2, "staging": 1}
    with pytest.raises(NotFound):
        reg.set_label("p", "qa", 3, "eve")
    rows, cursor = reg.rs.list_audit(prompt="p", start=0, limit=2)
    assert len(rows) == 2 and cursor is not None
    more, _ = reg.rs.list_audit(prompt="p", start=0, limit=50, cursor=cursor)
    actions = [r["action"] for r in rows + more]
    assert actions.count("create_version") == 2 and "move_label_forced" in actions
    assert {r["id"] for r in rows}.isdisjoint({r["id"] for r in more})
    listed = reg.rs.list_prompts()
    assert listed[0]["name"] == "p" and listed[0]["labels"] == {"production": 2, "staging": 1}


def test_concurrent_version_creation_numbers_every_version_once(store: Any) -> None:
    rs = ReleaseStore(store)
    reg = Registry(rs, PromptsConfig())
    errors: list[BaseException] = []

    def add() -> None:
        try:
            for _ in range(5):
                reg.create_version("busy", {"model": "chat", "messages": MSGS}, "t")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [v["version"] for v in rs.list_versions("busy", limit=100)] == list(range(20, 0, -1))


def test_shadow_results_and_experiment_outcomes(store: Any) -> None:
    rs = ReleaseStore(store)
    now = time.time()
    rows = []
    for i in range(4):
        rows.append({"id": uuid.uuid4().hex, "ts": now, "alias": "chat", "candidate": "c", "target": "q/m",
                     # hex ids that also read as numbers ("605e7563...") must come back as the same strings
                     "trace_id": f"{i}0e12345678", "span_id": f"605e75631177488{i}", "status": "ok" if i else "error",
                     "latency_ms": 100.0, "prod_latency_ms": 80.0, "cost_usd": 0.002, "prod_cost_usd": 0.001,
                     "exact_match": i % 2, "json_equal": None, "similarity": 0.5, "judge_score": 0.9})
    rs.insert_shadow_results(rows)
    (r,) = rs.shadow_report(start=now - 10, end=now + 10)
    assert (r["n"], r["errors"], r["exact_rate"], r["json_n"]) == (4, 1, pytest.approx(2 / 3), 0)
    assert r["cost_usd"] == pytest.approx(0.008) and r["prod_cost_usd"] == pytest.approx(0.004)
    page, cur = rs.list_shadow_results(start=now - 10, end=now + 10, limit=3)
    assert len(page) == 3 and cur is not None
    (one,) = rs.list_shadow_results(trace_id="30e12345678", start=now - 10, end=now + 10)[0]
    assert (one["trace_id"], one["span_id"]) == ("30e12345678", "605e756311774883")

    spans = []
    exposures = []
    for i in range(10):
        tid = f"trace-{i}"
        variant = "a" if i < 5 else "b"
        exposures.append((f"llm-{i}", "exp", variant, f"u{i}", tid, now, "ok" if i != 0 else "error", 10.0, None))
        ev = Span(trace_id=tid, span_id=new_span_id(), name="evaluator", kind="evaluator", start_time=now,
                  end_time=now)
        ev.attributes = {"score": 1.0 if variant == "b" else 0.5, "passed": variant == "b"}
        spans.append(ev)
    rs.insert_exposures(exposures)
    rs.insert_exposures(exposures[:2])  # a span written twice counts once
    store.write_spans(spans, lambda v: None)
    cfg = ExperimentConfig.model_validate({"name": "exp", "metric": "evaluator", "variants": [
        {"name": "a", "weight": 50}, {"name": "b", "weight": 50}]})
    out = report(cfg, "chat", rs, now - 10, now + 10)
    a, b = out["variants"]
    assert (a["exposures"], a["successes"], a["units"]) == (5, 4, 5)
    assert (a["evaluator"]["pass_rate"], b["evaluator"]["pass_rate"]) == (0.0, 1.0)
    (cmp,) = out["comparisons"]
    assert cmp["diff"] == 1.0 and cmp["significant"] and cmp["verdict"] == "better"
    assert rs.success_counts("exp", now - 10) == {"a": (4, 1), "b": (5, 0)}

    # the feedback feature's table (docs/feedback.md): scores count as score_norm, thumbs as 1 / 0,
    # neutral events (comments) not at all
    with store._write() as c:
        for i in range(10):
            kind, norm, sentiment = (("score", 0.8, 1) if i % 3 == 0 else ("comment", None, 0) if i % 3 == 1
                                     else ("thumbs", None, 1 if i >= 5 else -1))
            c.execute(store.dialect.q(
                "INSERT INTO feedback (feedback_id, request_hash, trace_id, kind, score_norm, sentiment, source, "
                "trace_time, trace_ts, created_at) VALUES (?, ?, ?, ?, ?, ?, 'end_user', ?, ?, ?)"),
                (uuid.uuid4().hex, "h", f"trace-{i}", kind, norm, sentiment, now, int(now), now))
    fb = rs.feedback_outcomes("exp", now - 10, now + 10)
    assert sorted(fb) == [("a", 0.0), ("a", 0.8), ("a", 0.8), ("b", 0.8), ("b", 0.8), ("b", 1.0), ("b", 1.0)]
