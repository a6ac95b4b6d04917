"""Feedback, human labels and the review queue on real stores (SQLite; PostgreSQL too), and the
`shipyard review` / `shipyard feedback` commands: sampling strata, materialisation (once per
day, same queue for everyone, concurrent builders), implied labels, the export that
`shipyard eval align --labels` reads."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from shipyard.feedback import (
    FeedbackService, build_queue, clear_review, get_labels, get_queue, iter_human_labels, parse_feedback, set_review,
)
from shipyard.feedback.when import today
from shipyard.store import open_store
from shipyard.tracing.span import Span


def dump(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v).decode()


def tid(i: int) -> str:
    return f"{i:032x}"


def llm(i: int, t: float, alias: str = "chat", **attrs: Any) -> Span:
    return Span(trace_id=tid(i), span_id=f"{i:016x}", name=f"chat {alias}", kind="llm", alias=alias, model="m",
                start_time=t, end_time=t + 0.5, completion_id=f"cmpl-{i}", attributes=attrs,
                input={"messages": [{"role": "user", "content": f"question {i}"}]},
                output={"choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i}"}}]})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    s = open_store(f"sqlite:///{tmp_path}/fb.db")
    yield s
    s.close()


def seed(store: Any, n: int = 40, t0: float | None = None) -> float:
    """n calls over the last hour: 3 aliases, 2 prompt versions, some guard-flagged; plus an
    eval run's call, a guard's judge call and an old call outside the window."""
    t0 = time.time() - 3600 if t0 is None else t0
    spans = []
    for i in range(n):
        attrs: dict[str, Any] = {"prompt": {"name": "support", "version": 1 + i % 2}}
        if i % 10 == 3:
            attrs["guard_decisions"] = [{"guard": "pii", "stage": "input", "decision": "fail", "action_taken": "flag"}]
        spans.append(llm(i, t0 + i * 60, ("chat", "smart", "cheap")[i % 3], **attrs))
    spans.append(llm(900, t0 + 5, metadata={"eval_run": "run-1"}))
    judge = llm(901, t0 + 6)
    judge.name = "judge relevance"
    spans.append(judge)
    spans.append(llm(902, t0 - 3 * 86400))
    store.write_spans(spans, dump)
    return t0


# ---- the queue -----------------------------------------------------------------------------

def test_queue_strata_risk_first_then_every_alias_and_prompt_version(store):
    seed(store)
    svc = FeedbackService(store)
    svc.record(parse_feedback({"trace_id": tid(5), "kind": "thumbs_down"}))
    svc.record(parse_feedback({"trace_id": tid(6), "kind": "score", "value": 1, "scale": [1, 5]}))
    svc.record(parse_feedback({"trace_id": tid(7), "kind": "thumbs_up"}))
    q = build_queue(store, None, 12)
    assert q["created"] and q["day"] == today() and q["candidates"] == 40
    items = q["items"]
    ids = [i["trace_id"] for i in items]
    assert len(ids) == len(set(ids)) == 12
    assert items[0]["trace_id"] == tid(5) and items[0]["stratum"] == "negative_feedback"
    assert items[1]["trace_id"] == tid(6) and items[1]["stratum"] == "low_score"
    flagged = [i for i in items if i["stratum"] == "guard_flagged"]
    assert len(flagged) == 2 and all(int(i["trace_id"], 16) % 10 == 3 for i in flagged)
    strata = {i["stratum"] for i in items}
    assert {"alias:chat", "alias:smart", "alias:cheap", "prompt:support@1", "prompt:support@2"} <= strata
    assert {i["alias"] for i in items} == {"chat", "smart", "cheap"}
    assert not {tid(900), tid(901), tid(902)} & set(ids)  # eval traffic, judges, outside the window
    assert [i["position"] for i in items] == list(range(1, 13))


def test_queue_is_materialised_once_and_sampling_is_deterministic(store, tmp_path):
    t0 = seed(store)
    q1 = build_queue(store, None, 8)
    q2 = build_queue(store, None, 8)
    assert not q2["created"] and [i["trace_id"] for i in q2["items"]] == [i["trace_id"] for i in q1["items"]]
    assert get_queue(store, today())["items"] == q1["items"]
    other = open_store(f"sqlite:///{tmp_path}/other.db")  # the same traffic elsewhere: the same sample
    try:
        seed(other, t0=t0)
        assert [i["trace_id"] for i in build_queue(other, None, 8)["items"]] == [i["trace_id"] for i in q1["items"]]
    finally:
        other.close()


def test_force_resamples_but_keeps_what_was_reviewed(store):
    seed(store)
    q = build_queue(store, None, 5)
    kept = q["items"][1]["trace_id"]
    set_review(store, kept, "pass", reviewer="ann")
    again = build_queue(store, None, 5, force=True)
    assert again["created"] and len(again["items"]) == 5
    assert again["items"][0]["trace_id"] == kept and again["items"][0]["verdict"] == "pass"
    assert len({i["trace_id"] for i in again["items"]}) == 5


def test_a_trace_is_not_queued_twice_and_past_days_use_their_own_window(store):
    now = time.time()
    seed(store, n=6, t0=now - 86400 * 1.5)  # yesterday
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(now - 86400))
    q = build_queue(store, yesterday, 50, window_s=3 * 86400)
    assert q["window_end"] <= now - (now % 86400) + 1  # ends at the end of that day
    assert len(q["items"]) == 6
    later = build_queue(store, None, 50, window_s=3 * 86400)
    assert later["items"] == [] and later["candidates"] == 0  # all already queued (902 is too old for both)
    with pytest.raises(Exception, match="future"):
        build_queue(store, "2999-01-01", 5)


def test_concurrent_builders_agree_on_one_queue(tmp_path):
    url = f"sqlite:///{tmp_path}/race.db"
    first = open_store(url)
    seed(first)
    stores = [first, open_store(url), open_store(url)]
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def build(s: Any) -> None:
        try:
            barrier.wait()
            results.append(build_queue(s, None, 10))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert not errors, errors
    assert sum(r["created"] for r in results) == 1
    assert len({tuple(i["trace_id"] for i in r["items"]) for r in results}) == 1


# ---- labels ---------------------------------------------------------------------------------

def labels(store: Any, **kw: Any) -> dict[tuple[str, str], tuple[str, str]]:
    return {(r["trace_id"], r["criterion"]): (r["label"], r["origin"]) for r in iter_human_labels(store, **kw)}


def test_tags_become_criteria_with_implied_passes(store):
    seed(store, n=5)
    set_review(store, tid(0), "pass", reviewer="ann")
    set_review(store, tid(1), "fail", ["Too Verbose"], "rambles", "ann")
    set_review(store, tid(2), "fail", [], "bad but unsure why", "bob")  # no tag: no implied rows
    got = labels(store)
    assert got[(tid(0), "overall")] == ("pass", "review")
    assert got[(tid(0), "too-verbose")] == ("pass", "implied")  # backfilled when the tag appeared
    assert got[(tid(1), "too-verbose")] == ("fail", "review")
    assert (tid(2), "too-verbose") not in got
    set_review(store, tid(3), "fail", ["wrong-facts"])
    got = labels(store)
    assert got[(tid(1), "wrong-facts")] == ("pass", "implied")  # tid(1) named its failure modes
    assert got[(tid(3), "too-verbose")] == ("pass", "implied")
    assert (tid(2), "wrong-facts") not in got
    # relabel: the tag disappears everywhere -> its implied rows go too
    set_review(store, tid(3), "pass")
    got = labels(store)
    assert not [k for k in got if k[1] == "wrong-facts"]
    assert got[(tid(3), "overall")] == ("pass", "review") and got[(tid(3), "too-verbose")] == ("pass", "implied")
    assert {k: v for k, v in labels(store, include_implied=False).items() if v[1] == "implied"} == {}
    assert [r["criterion"] for r in get_labels(store, tid(1))] == ["overall", "too-verbose"]
    assert clear_review(store, tid(1))
    assert not [k for k in labels(store) if k[1] == "too-verbose"]  # its only reviewed use is gone
    assert not clear_review(store, tid(1))


def test_review_validation(store):
    seed(store, n=2)
    from shipyard.errors import InvalidRequest, NotFound

    with pytest.raises(InvalidRequest, match="verdict"):
        set_review(store, tid(0), "ok")
    with pytest.raises(InvalidRequest, match="tag"):
        set_review(store, tid(0), "fail", ["no/slashes"])
    with pytest.raises(NotFound):
        set_review(store, tid(777), "pass")
    out = set_review(store, tid(0), "fail", "a, b ,a", "n", "r")
    assert out["tags"] == ["a", "b"] and out["span_id"] == f"{0:016x}"


def test_iter_human_labels_pages_and_since(store, monkeypatch):
    from shipyard.feedback import labels as L

    seed(store, n=12)
    monkeypatch.setattr(L, "PAGE", 5)
    for i in range(12):
        set_review(store, tid(i), "pass" if i % 2 else "fail", now=1000.0 + i)
    rows = list(iter_human_labels(store, "overall"))
    assert [r["trace_id"] for r in rows] == [tid(i) for i in range(12)]
    assert [r["trace_id"] for r in iter_human_labels(store, "overall", since=1006.0)] == [tid(i) for i in range(6, 12)]


def test_export_labels_is_what_eval_align_reads(store, tmp_path, capsys):
    from shipyard.cli import main
    from shipyard.evals.alignment import labels_from_store, read_labels

    seed(store, n=4)
    set_review(store, tid(0), "pass")
    set_review(store, tid(1), "fail", ["rude"])
    url = f"sqlite:///{tmp_path}/fb.db"
    out = tmp_path / "labels.jsonl"
    assert main(["review", "export-labels", "--store", url, "--out", str(out)]) == 0
    assert "wrote 4 labels" in capsys.readouterr().err
    lines = [orjson.loads(x) for x in out.read_text().splitlines()]
    assert all(set(x) == {"trace_id", "criterion", "label"} for x in lines)
    parsed = read_labels(out, on_error="fail")
    assert {(lab.trace_id, lab.criterion, lab.passed) for lab in parsed} == {
        (tid(0), "overall", True), (tid(0), "rude", True), (tid(1), "overall", False), (tid(1), "rude", False)}
    direct = labels_from_store(store)
    assert {(lab.trace_id, lab.criterion, lab.passed) for lab in direct} == {
        (lab.trace_id, lab.criterion, lab.passed) for lab in parsed}
    assert main(["review", "export-labels", "--store", url, "--out", "-", "--criterion", "rude", "--no-implied"]) == 0
    assert [orjson.loads(x)["trace_id"] for x in capsys.readouterr().out.splitlines()] == [tid(1)]


def test_review_and_feedback_commands(store, tmp_path, capsys):
    from shipyard.cli import main

    seed(store, n=6)
    url = f"sqlite:///{tmp_path}/fb.db"
    assert main(["review", "sample", "--store", url, "--size", "4"]) == 0
    out = capsys.readouterr().out
    assert f"review queue {today()}: 4 traces" in out
    assert main(["review", "sample", "--store", url, "--size", "4"]) == 0
    assert "already built" in capsys.readouterr().out
    q = get_queue(store, today())
    first = q["items"][0]["trace_id"]
    assert main(["review", "label", first, "--store", url, "--verdict", "fail", "--tags", "rude,slow"]) == 0
    assert "labelled" in capsys.readouterr().out
    assert main(["review", "show", "--store", url, "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["reviewed"] == 1 and shown["items"][0]["verdict"] == "fail"
    assert main(["review", "show", "--store", url, "--date", "2001-01-01"]) == 1
    assert main(["feedback", "add", first, "--store", url, "--kind", "thumbs", "--value", "down"]) == 0
    assert "recorded" in capsys.readouterr().out
    assert main(["feedback", "add", tid(999), "--store", url, "--kind", "accepted"]) == 2
    assert "No trace" in capsys.readouterr().err
    assert main(["feedback", "list", "--store", url, "--json"]) == 0
    assert [f["kind"] for f in orjson.loads(capsys.readouterr().out)] == ["thumbs"]
    assert main(["feedback", "stats", "--store", url, "--by", "alias"]) == 0
    assert "1 events on 1 traces" in capsys.readouterr().out


# ---- PostgreSQL -------------------------------------------------------------------------------

@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[Any]:
    from services import drop_postgres_database, new_postgres_database

    url = new_postgres_database(postgres_url)
    s = open_store(url)
    try:
        yield s
    finally:
        s.close()
        drop_postgres_database(url)


def test_the_same_on_postgresql(pg_store, tmp_path):
    from shipyard.export import export_finetune
    from shipyard.feedback import feedback_stats

    store = pg_store
    t0 = seed(store, n=12)
    svc = FeedbackService(store)
    row, created = svc.record(parse_feedback({"trace_id": tid(1), "kind": "thumbs_down", "idempotency_key": "k"}))
    again, created2 = svc.record(parse_feedback({"trace_id": tid(1), "kind": "thumbs_down", "idempotency_key": "k"}))
    assert created and not created2 and again["id"] == row["id"]
    svc.record(parse_feedback({"completion_id": "cmpl-2", "kind": "accepted"}))
    svc.record(parse_feedback({"trace_id": tid(4), "kind": "correction", "text": "better answer"}))
    stats = feedback_stats(store, t0 - 60, time.time() + 60, 3600, "prompt_version")
    assert stats["summary"]["total"] == 3 and {r["group"] for r in stats["totals"]} <= {"support@1", "support@2"}
    q = build_queue(store, None, 6)
    assert q["created"] and q["items"][0]["trace_id"] == tid(1) and len(q["items"]) == 6
    assert not build_queue(store, None, 6)["created"]
    set_review(store, tid(0), "pass")
    set_review(store, tid(3), "fail", ["rude"])
    assert labels(store)[(tid(0), "rude")] == ("pass", "implied")
    assert get_queue(store, today())["reviewed"] >= 1
    summary = export_finetune(store, tmp_path / "ft", "openai", val_fraction=0)
    assert summary.included["accepted"] == 1 and summary.included["corrected"] == 1
    assert summary.included["reviewed_pass"] == 1 and summary.excluded["negative_feedback"] == 2


def test_eval_align_checks_a_judge_against_review_labels(tmp_path, capsys):
    """`shipyard eval align` reads the human_labels table (or the exported JSONL): a tag
    becomes a criterion with both fails (tagged) and passes (implied), so it can be aligned."""
    from shipyard.cli import main

    url = f"sqlite:///{tmp_path}/align.db"
    store = open_store(url)
    t = time.time()
    answers = ["Sorry, no.", "Sure, here it is.", "Sorry about that.", "Yes, done."]
    store.write_spans([Span(trace_id=tid(i), span_id=f"{i:016x}", name="chat chat", kind="llm", alias="chat",
                            start_time=t, end_time=t + 1, input={"messages": [{"role": "user", "content": "q"}]},
                            output={"choices": [{"message": {"role": "assistant", "content": a}}]})
                       for i, a in enumerate(answers)], dump)
    for i, a in enumerate(answers):
        sorry = a.startswith("Sorry")
        set_review(store, tid(i), "fail" if sorry else "pass", ["apology"] if sorry else [])
    store.close()
    spec = tmp_path / "eval.yaml"
    spec.write_text(f"""
name: align-check
gateway_url: http://127.0.0.1:9
store: {url}
dataset: unused
models: [chat]
evaluators:
  - {{type: not_contains, name: no-sorry, value: Sorry, criterion: apology}}
  - {{type: contains, name: says-sure, value: Sure, criterion: apology}}
""")
    assert main(["eval", "align", str(spec), "--json", "-"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    crit = next(c for c in report["criteria"] if c["criterion"] == "apology")
    judges = {j["judge"]: j for j in crit["judges"]}
    assert crit["labels"] == 4 and crit["selected"] == "no-sorry"
    assert judges["no-sorry"]["agreement"] == 1.0 and judges["says-sure"]["agreement"] == 0.75
    labels = tmp_path / "labels.jsonl"
    assert main(["review", "export-labels", "--store", url, "--out", str(labels), "--criterion", "apology"]) == 0
    capsys.readouterr()
    assert main(["eval", "align", str(spec), "--labels", str(labels), "--json", "-"]) == 0
    again = orjson.loads(capsys.readouterr().out)
    assert next(c for c in again["criteria"] if c["criterion"] == "apology")["selected"] == "no-sorry"


# ---- retention -------------------------------------------------------------------------------

def test_retention_takes_feedback_with_its_traces_and_keeps_human_labels(store):
    from types import SimpleNamespace

    from shipyard.config import RecordingConfig
    from shipyard.feedback import parse_outcome
    from shipyard.tracing.recorder import Recorder

    seed(store)  # tid(902) started 3 days ago, the rest within the hour
    rec = Recorder(store, RecordingConfig(retention_days=1, flush_interval_s=0.05))
    svc = FeedbackService(store, engine=SimpleNamespace(span_listeners=[], recorder=rec))
    svc.record(parse_feedback({"trace_id": tid(902), "kind": "comment", "text": "my phone is 555-0100"}))
    svc.record(parse_feedback({"trace_id": tid(5), "kind": "thumbs_down"}))
    svc.record_outcome(parse_outcome({"trace_id": tid(5), "name": "converted", "value": 1}))
    set_review(store, tid(902), "fail", ["tone"], "rude", "rita")
    rec.start()
    deadline = time.monotonic() + 10
    while rec.purged == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    rec.close()
    assert rec.purged == 1 and store.get_trace(tid(902)) is None
    assert svc.list_feedback(trace_id=tid(902), limit=10) == []  # the comment went with its trace
    assert [f["kind"] for f in svc.list_feedback(trace_id=tid(5), limit=10)] == ["thumbs"]
    assert {r["label"] for r in get_labels(store, tid(902))} == {"fail"}  # curated labels stay
    with store._read() as cur:
        cur.execute("SELECT COUNT(*) FROM outcomes")
        assert cur.fetchone()[0] == 1  # recorded just now: kept
    assert svc.purge(time.time() + 60) == 2  # a later cutoff takes the rest: the feedback and the outcome
