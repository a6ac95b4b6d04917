"""The runner in-process and against a running server: real gateway calls to a loopback
fake, real SQLite, results and evaluator spans linked to each case's trace."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from shipyard.evals.datasets import Datasets
from shipyard.evals.report import Gate, baseline_diffs
from shipyard.evals.results import EvalStore
from shipyard.evals.runner import run_eval
from shipyard.evals.spec import load_spec
from shipyard.store import open_store
from test_evals_support import HARD, chat_requests, items, model_requests, rules, spec, write_config


@pytest.fixture
def setup(tmp_path: Path, fake_openai):
    fake_openai.reply_fn = rules
    db = tmp_path / "evals.db"
    cfg = write_config(tmp_path / "shipyard.yaml", fake_openai, db)
    store = open_store(f"sqlite:///{db}")
    Datasets(store).create("capitals", items(16))
    store.close()
    return {"db": db, "cfg": cfg, "fake": fake_openai, "dir": tmp_path}


def open_db(setup):
    return open_store(f"sqlite:///{setup['db']}")


def test_two_prompts_on_two_aliases_with_a_judge(setup) -> None:
    loaded = load_spec(spec(setup["cfg"]))
    assert [v.name for v in loaded.variants] == ["terse/good", "terse/bad", "polite/good", "polite/bad"]
    res = run_eval(loaded, progress=False)
    assert res.status == "finished" and res.done == res.total == 64 and res.ran == 64
    reqs = chat_requests(setup["fake"])
    assert len(model_requests(setup["fake"])) == 64 and len(reqs) == 128  # each case: the call + its judge
    polite = [b for b in model_requests(setup["fake"]) if b["messages"][0]["role"] == "system"]
    assert len(polite) == 32 and polite[0]["messages"][1]["content"].startswith("Please tell me the capital city of")
    store = open_db(setup)
    try:
        s = EvalStore(store).summary(res.run_id)
        rows = {v["variant"]: v for v in s["variants"]}
        hard = sum(1 for it in items(16) if it["variables"]["country"] in HARD)
        assert rows["terse/good"]["pass_rate"] == 1.0 and rows["terse/good"]["n"] == 16
        assert rows["terse/bad"]["passed"] == 16 - hard and rows["terse/bad"]["failed"] == hard
        assert rows["terse/good"]["cost_usd"] > rows["terse/bad"]["cost_usd"] > 0
        assert rows["polite/good"]["latency_p50"] is not None and rows["polite/good"]["latency_p95"] >= rows["polite/good"]["latency_p50"]
        lo, hi = rows["terse/bad"]["pass_ci"]
        assert lo < (16 - hard) / 16 < hi
        judge = next(e for e in s["evaluators"] if e["variant"] == "terse/bad" and e["evaluator"] == "correct")
        assert judge["failed"] == hard and judge["errors"] == 0
        # every result is linked to its trace: root span, the call, the judge's call, evaluator spans
        with store._read() as cur:
            cur.execute("SELECT trace_id, case_id, variant FROM eval_results WHERE run_id = ? AND variant = 'polite/bad' "
                        "ORDER BY case_id LIMIT 1", (res.run_id,))
            trace_id, case_id, variant = cur.fetchone()
            cur.execute("SELECT COUNT(*) FROM eval_scores WHERE trace_id = ?", (trace_id,))
            assert cur.fetchone()[0] == 2
        trace = store.get_trace(trace_id)
        by_kind = {}
        for sp in trace["spans"]:
            by_kind.setdefault(sp["kind"], []).append(sp)
        (root,) = by_kind["chain"]
        assert root["parent_id"] is None and root["attributes"]["eval_run"] == res.run_id
        assert root["attributes"]["eval_case"] == case_id and root["attributes"]["eval_variant"] == variant
        call, judge_call = sorted(by_kind["llm"], key=lambda sp: sp["name"])
        assert call["parent_id"] == root["span_id"] and call["attributes"]["eval_case"] == case_id
        (ev_span,) = by_kind["evaluator"]
        assert ev_span["name"] == "evaluate contains, correct" and ev_span["parent_id"] == root["span_id"]
        assert judge_call["name"] == "judge correct" and judge_call["parent_id"] == ev_span["span_id"]
        assert set(ev_span["output"]) == {"contains", "correct"}
        assert all(r["passed"] in (True, False) and r["error"] is None for r in ev_span["output"].values())
    finally:
        store.close()


def test_unparseable_judge_reply_is_an_evaluator_error(setup) -> None:
    s = spec(setup["cfg"], models=["good"], prompts={"terse": {"prompt": "Capital of {{ country }}?"}},
             evaluators=[{"type": "contains"}, {"type": "judge", "name": "broken", "model": "judge-broken",
                                                "rubric": "r"}])
    res = run_eval(load_spec(s), progress=False)
    store = open_db(setup)
    try:
        summ = EvalStore(store).summary(res.run_id)
        (v,) = summ["variants"]
        assert v["passed"] == 0 and v["failed"] == 0 and v["eval_errors"] == 16 and v["pass_rate"] is None
        broken = next(e for e in summ["evaluators"] if e["evaluator"] == "broken")
        assert broken["errors"] == 16 and broken["passed"] == broken["failed"] == 0
        with store._read() as cur:
            cur.execute("SELECT passed, error FROM eval_scores WHERE run_id = ? AND evaluator = 'broken' LIMIT 1",
                        (res.run_id,))
            passed, error = cur.fetchone()
        assert passed is None and "no 'pass' field" in error and "Looks fine" in error
        assert Gate(fail_under=0.5).check(summ)  # nothing decided: the gate does not pass
    finally:
        store.close()


def test_resume_runs_only_what_is_missing(setup) -> None:
    loaded = load_spec(spec(setup["cfg"], evaluators=[{"type": "contains"}]))
    res = run_eval(loaded, progress=False)
    assert res.done == 64
    con = sqlite3.connect(setup["db"])
    con.execute("DELETE FROM eval_results WHERE run_id = ? AND case_id >= 'c010'", (res.run_id,))
    con.execute("UPDATE eval_runs SET status = 'interrupted' WHERE run_id = ?", (res.run_id,))
    con.commit()
    con.close()
    before = len(model_requests(setup["fake"]))
    again = run_eval(loaded, resume=res.run_id, progress=False)
    assert again.status == "finished" and again.done == 64 and again.ran == 6 * 4
    assert len(model_requests(setup["fake"])) - before == 24
    assert run_eval(loaded, resume=res.run_id, progress=False).ran == 0  # nothing left to do


def test_repeats_measure_nondeterminism(setup) -> None:
    seen: dict[str, int] = {}

    def flaky(body):
        if body["model"] != "m-good":
            return rules(body)
        key = body["messages"][-1]["content"]
        seen[key] = seen.get(key, 0) + 1
        if "France" in key and seen[key] % 2 == 0:  # France's answer flips every other time
            return "Hmm."
        return rules(body)

    setup["fake"].reply_fn = flaky
    s = spec(setup["cfg"], models=["good"], prompts={"terse": {"prompt": "Capital of {{ country }}?"}},
             evaluators=[{"type": "contains"}], concurrency=1)
    res = run_eval(load_spec(s), repeat=4, progress=False)
    assert res.total == 64
    store = open_db(setup)
    try:
        (v,) = EvalStore(store).summary(res.run_id)["variants"]
    finally:
        store.close()
    r = v["repeats"]
    france = sum(1 for it in items(16) if it["variables"]["country"] == "France")  # 2 cases, passes 2 of 4
    assert r["cases"] == 16 and r["flipped"] == france and r["flip_rate"] == pytest.approx(france / 16)
    assert r["pass_at"][1] == pytest.approx((14 + 2 * 0.5) / 16)
    assert r["pass_at"][4] == pytest.approx(1.0)
    assert r["pass_all"] == pytest.approx(14 / 16)


def test_pairwise_and_baseline_diff(setup) -> None:
    s = spec(setup["cfg"], prompts={"terse": {"prompt": "Capital of {{ country }}?"}},
             evaluators=[{"type": "contains"}, {"type": "pairwise", "model": "judge", "against": "terse/bad"}])
    loaded = load_spec(s)
    base = run_eval(loaded, progress=False)

    def regressed(body):  # the good model forgets Chile
        if body["model"] == "m-good" and "Chile" in body["messages"][-1]["content"]:
            return "No idea."
        return rules(body)

    setup["fake"].reply_fn = regressed
    now = run_eval(loaded, progress=False)
    store = open_db(setup)
    try:
        evs = EvalStore(store)
        summ = evs.summary(now.run_id)
        (pw,) = summ["pairwise"]
        hard = sum(1 for it in items(16) if it["variables"]["country"] in HARD)
        chile = sum(1 for it in items(16) if it["variables"]["country"] == "Chile")
        assert (pw["a"], pw["b"], pw["n"]) == ("terse/bad", "terse/good", 16)
        assert pw["b_wins"] == hard and pw["a_wins"] == chile and pw["ties"] == 16 - hard - chile
        diffs = baseline_diffs(evs, summ, base.run_id)
        good = next(d for d in diffs if d["variant"] == "terse/good")
        assert good["regressions"] == chile and good["fixes"] == 0
        assert {r["case_id"] for r in good["regressed"]} == {it["id"] for it in items(16)
                                                             if it["variables"]["country"] == "Chile"}
        assert next(d for d in diffs if d["variant"] == "terse/bad")["regressions"] == 0
        failures = Gate(fail_on_regression=True).check(summ, diffs)
        assert len(failures) == 1 and "terse/good" in failures[0] and "flipped pass→fail" in failures[0]
        assert not Gate(fail_on_regression=True, regression_tolerance=0.2).check(summ, diffs)
    finally:
        store.close()


def test_against_a_running_server(serve, fake_openai, tmp_path: Path) -> None:
    fake_openai.reply_fn = rules
    db = tmp_path / "server.db"
    from test_evals_support import config

    server = serve(config(fake_openai, db))
    Datasets(server.engine.store).create("capitals", items(6))
    s = spec(None, gateway_url=server.url, store=f"sqlite:///{db}", models=["good"],
             prompts={"terse": {"prompt": "Capital of {{ country }}?"}})
    res = run_eval(load_spec(s), progress=False)
    assert res.done == 6
    server.flush()
    store = open_db({"db": db})
    try:
        evs = EvalStore(store)
        evs.backfill_costs(res.run_id)  # the server records the costs after answering
        summ = evs.summary(res.run_id)
        assert summ["variants"][0]["pass_rate"] == 1.0
        assert summ["variants"][0]["cost_usd"] == pytest.approx(6 * (11 * 2.0 + 7 * 8.0) / 1e6)
        with store._read() as cur:
            cur.execute("SELECT trace_id FROM eval_results WHERE run_id = ? LIMIT 1", (res.run_id,))
            (trace_id,) = cur.fetchone()
        trace = store.get_trace(trace_id)
        kinds = sorted(sp["kind"] for sp in trace["spans"])
        assert kinds.count("llm") == 2 and "chain" in kinds and kinds.count("evaluator") == 1
        root = next(sp for sp in trace["spans"] if sp["kind"] == "chain")
        call = next(sp for sp in trace["spans"] if sp["kind"] == "llm" and sp["name"] == "chat good")
        assert call["parent_id"] == root["span_id"]  # the server joined the case's trace (traceparent)
        assert call["attributes"]["metadata"]["eval_run"] == res.run_id
    finally:
        store.close()


def test_template_errors_and_missing_models_fail_early(setup) -> None:
    from shipyard.errors import ConfigError

    with pytest.raises(ConfigError, match="does not parse"):
        load_spec(spec(setup["cfg"], prompts={"p": {"prompt": "{{ country "}}))
    with pytest.raises(ConfigError, match="variant 'terse/nope': model 'nope' is neither an alias"):
        run_eval(load_spec(spec(setup["cfg"], models=["nope"])), progress=False)
    with pytest.raises(ConfigError, match=r"invalid eval spec: dataset: required key is missing"):
        load_spec({"name": "x", "models": ["good"]})
    # a variable the item lacks is a case error (recorded), not a crash
    res = run_eval(load_spec(spec(setup["cfg"], models=["good"], prompts={"p": {"prompt": "{{ city }}"}},
                                  evaluators=["contains"])), progress=False)
    store = open_db(setup)
    try:
        (v,) = EvalStore(store).summary(res.run_id)["variants"]
        assert v["errors"] == 16
        with store._read() as cur:
            cur.execute("SELECT error FROM eval_results WHERE run_id = ? LIMIT 1", (res.run_id,))
            assert "'city' is undefined" in cur.fetchone()[0]
    finally:
        store.close()


def test_provider_colon_model_is_an_ad_hoc_alias(setup) -> None:
    s = spec(setup["cfg"], models=["up:m-good"], prompts={"t": {"prompt": "Capital of {{ country }}?"}},
             evaluators=["contains"])
    res = run_eval(load_spec(s), limit=3, progress=False)
    assert res.done == 3
    assert {b["model"] for b in model_requests(setup["fake"])} == {"m-good"}
    assert json.loads(json.dumps(res.run_id))  # a plain string id


def test_alignment_reads_the_review_queue_labels(setup) -> None:
    import asyncio

    from shipyard.evals.alignment import align, labels_from_store
    from shipyard.evals.runner import open_target
    from shipyard.feedback.labels import set_review

    s = spec(setup["cfg"], models=["bad"], prompts={"t": {"prompt": "Capital of {{ country }}?"}},
             evaluators=[{"type": "judge", "name": "capital", "criterion": "overall", "model": "judge",
                          "rubric": "names the capital"}])
    loaded = load_spec(s)
    res = run_eval(loaded, progress=False)
    store = open_db(setup)
    try:
        with store._read() as cur:
            cur.execute("SELECT trace_id, output FROM eval_results WHERE run_id = ?", (res.run_id,))
            outputs = cur.fetchall()
        for trace_id, output in outputs:  # reviewers agree with the judge except on one trace
            ok = "capital of" in output
            if trace_id == outputs[0][0]:
                ok = not ok
            set_review(store, trace_id, "pass" if ok else "fail", reviewer="ann")
        labels = labels_from_store(store, "overall")
        assert len(labels) == 16 and all(lab.trace_id for lab in labels)
    finally:
        store.close()
    target = open_target(loaded)

    async def go():
        await target.caller.start()
        try:
            return await align(target.store, loaded.evaluators, labels, caller=target.caller)
        finally:
            await target.close()

    report = asyncio.run(go())
    (crit,) = report["criteria"]
    (judge,) = crit["judges"]
    assert judge["n"] == 16 and judge["agreement"] == pytest.approx(15 / 16) and judge["selected"]
    assert len(judge["disagreements"]) == 1 and judge["disagreements"][0]["key"] == outputs[0][0]
