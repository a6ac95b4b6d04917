"""The key flows through the real `shipyard` command (subprocesses), against loopback fakes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import client_for
from fakes import Fault
from test_evals_support import (CAPITALS, HARD, config, graded_answer, is_judge, items, model_requests, rules, spec,
                                write_config)

CLI = [sys.executable, "-m", "shipyard.cli"]


def sh(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("SHIPYARD_CONFIG", None)
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def work(tmp_path: Path, fake_openai):
    fake_openai.reply_fn = rules
    db = tmp_path / "shipyard.db"
    write_config(tmp_path / "shipyard.yaml", fake_openai, db)
    with open(tmp_path / "capitals.jsonl", "w") as f:
        for it in items(16):
            f.write(json.dumps(it) + "\n")
    return tmp_path


def write_spec(path: Path, **kw) -> Path:
    path.write_text(yaml.safe_dump(spec("shipyard.yaml", **kw)))
    return path


def rows(db: Path, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def test_import_jsonl_with_a_bad_line(work: Path) -> None:
    bad = work / "bad.jsonl"
    bad.write_text(json.dumps(items(1)[0]) + "\n" + '{"variables": {"country": "Peru"}, \n' +
                   json.dumps(items(2)[1]) + "\n" + json.dumps({"id": "x", "expected": "no input"}) + "\n")
    r = sh("datasets", "import", "caps", "bad.jsonl", "-c", "shipyard.yaml", "--on-error", "fail", cwd=work)
    assert r.returncode == 2 and "bad.jsonl: line 2: not valid JSON" in r.stderr and "nothing imported" in r.stderr
    r = sh("datasets", "import", "caps", "bad.jsonl", "-c", "shipyard.yaml", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "line 2: not valid JSON" in r.stderr and "line 4: a row needs exactly one of" in r.stderr
    assert "dataset caps v1: 2 items imported, 2 skipped" in r.stdout
    r = sh("datasets", "import", "caps", "capitals.jsonl", "-c", "shipyard.yaml", "--append", "--holdout", "0.3",
           cwd=work)
    assert "dataset caps v2: 14 items imported, 2 skipped" in r.stdout  # c000, c001 are already in v1
    r = sh("datasets", "list", "-c", "shipyard.yaml", "--json", cwd=work)
    (ds,) = json.loads(r.stdout)
    assert ds["name"] == "caps" and ds["version"] == 2 and ds["item_count"] == 16
    r = sh("datasets", "show", "caps", "--version", "1", "-c", "shipyard.yaml", "--json", cwd=work)
    assert [i["id"] for i in json.loads(r.stdout)["items"]] == ["c000", "c001"]
    r = sh("datasets", "show", "nope", "-c", "shipyard.yaml", cwd=work)
    assert r.returncode == 2 and "dataset 'nope' not found" in r.stderr


def test_dataset_from_production_traces(serve, fake_openai, tmp_path: Path) -> None:
    fake_openai.reply_fn = rules
    db = tmp_path / "prod.db"
    server = serve(config(fake_openai, db))
    client = client_for(server)
    picked = []
    for country in ("France", "Spain", "Peru"):
        raw = client.chat.completions.with_raw_response.create(
            model="good", messages=[{"role": "user", "content": f"Capital of {country}?"}])
        picked.append(raw.headers["x-shipyard-trace-id"])
    client.chat.completions.create(model="bad", messages=[{"role": "user", "content": "Capital of Japan?"}])
    server.flush()
    r = sh("datasets", "from-traces", "prod", "--store", f"sqlite:///{db}", "--alias", "good", "--since", "1h",
           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "dataset prod v1: 3 items from traces, 0 skipped" in r.stdout
    r = sh("datasets", "from-traces", "picked", "--store", f"sqlite:///{db}", "--trace-id", picked[2],
           "--trace-id", "f" * 32, cwd=tmp_path)
    assert "dataset picked v1: 1 items from traces, 1 skipped" in r.stdout and "no such trace" in r.stderr
    r = sh("datasets", "export", "prod", "--store", f"sqlite:///{db}", cwd=tmp_path)
    exported = [json.loads(line) for line in r.stdout.splitlines()]
    assert {e["trace_id"] for e in exported} == set(picked)
    assert {e["expected"] for e in exported} == {f"The capital of {c} is {CAPITALS[c]}." for c in ("France", "Spain", "Peru")}
    # and the production dataset runs as an eval: its conversations, a new system prompt, two models
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({
        "name": "prod", "store": f"sqlite:///{db}", "config": "shipyard.yaml", "dataset": "prod",
        "prompts": {"tutor": {"system": "You are a geography tutor."}}, "models": ["good", "bad"],
        "evaluators": [{"type": "similarity", "threshold": 0.9}]}))
    (tmp_path / "shipyard.yaml").write_text(yaml.safe_dump(config(fake_openai, db)))
    r = sh("eval", "run", "eval.yaml", "--json", "-", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    rates = {v["variant"]: v["pass_rate"] for v in report["variants"]}
    assert rates == {"tutor/good": 1.0, "tutor/bad": pytest.approx(2 / 3)}


def test_eval_run_two_variants_two_aliases_judge_and_gate(work: Path) -> None:
    write_spec(work / "eval.yaml")
    assert sh("datasets", "import", "capitals", "capitals.jsonl", "-c", "shipyard.yaml", cwd=work).returncode == 0
    r = sh("eval", "run", "eval.yaml", "--fail-under", "0.9", "--html", "report.html", "--json", "report.json",
           "--no-progress", cwd=work)
    assert r.returncode == 1, r.stderr  # the bad model is under 90 %
    out = r.stdout
    for variant in ("terse/good", "terse/bad", "polite/good", "polite/bad"):
        assert variant in out
    hard = sum(1 for it in items(16) if it["variables"]["country"] in HARD)
    assert f"{100 * (16 - hard) / 16:.1f}%" in out and "GATE FAILED" in out
    assert f"terse/bad: pass rate {100 * (16 - hard) / 16:.1f}% is under 90.0%" in out
    assert "p50 ms" in out and "cost total / per case" in out and "Evaluators" in out
    report = json.loads((work / "report.json").read_text())
    assert report["gate"]["passed"] is False and len(report["gate"]["failures"]) == 2
    by = {v["variant"]: v for v in report["variants"]}
    assert by["polite/good"]["pass_rate"] == 1.0 and by["polite/good"]["cost_usd"] > by["polite/bad"]["cost_usd"]
    page = (work / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") >= 4
    assert "polite/bad" in page and "Pass rate vs cost per case" in page
    assert "<script" not in page and 'src="http' not in page and 'href="http' not in page  # self-contained
    run_id = report["run"]["run_id"]
    r = sh("eval", "run", "eval.yaml", "--fail-under", "0.5", "--baseline", run_id, "--fail-on-regression",
           "--no-progress", cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gate passed" in r.stdout and f"Against baseline run {run_id}" in r.stdout
    r = sh("eval", "report", run_id, "-c", "shipyard.yaml", "--fail-under", "0.99", cwd=work)
    assert r.returncode == 1 and "GATE FAILED" in r.stdout
    r = sh("eval", "list", "--spec", "eval.yaml", "--json", cwd=work)
    assert len(json.loads(r.stdout)) == 2


def _wait_rows(db: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if rows(db, "SELECT COUNT(*) FROM eval_results")[0][0] >= n:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise AssertionError("the run made no progress")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_without_redoing_finished_cases(work: Path, fake_openai, sig) -> None:
    fake_openai.fail_next(Fault("delay", seconds=0.03), times=100_000)  # slow enough to interrupt
    n_items = 120
    with open(work / "many.jsonl", "w") as f:
        for it in items(n_items):
            f.write(json.dumps(it) + "\n")
    assert sh("datasets", "import", "capitals", "many.jsonl", "-c", "shipyard.yaml", cwd=work).returncode == 0
    write_spec(work / "eval.yaml", models=["good"], evaluators=["contains"], concurrency=4)
    env = {**os.environ}
    proc = subprocess.Popen([*CLI, "eval", "run", "eval.yaml", "--run-id", "r1", "--no-progress"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    db = work / "shipyard.db"
    _wait_rows(db, 40, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    total = 2 * n_items
    done = rows(db, "SELECT COUNT(*) FROM eval_results WHERE run_id = 'r1'")[0][0]
    assert 40 <= done < total
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "--resume r1" in err
        assert rows(db, "SELECT status FROM eval_runs WHERE run_id = 'r1'") == [("interrupted",)]
    time.sleep(0.2)  # let calls cut off by the signal reach the fake before counting
    before = len(model_requests(fake_openai))
    r = sh("eval", "run", "eval.yaml", "--resume", "r1", "--no-progress", cwd=work, timeout=240)
    assert r.returncode == 0, r.stderr
    assert f"{total}/{total} cases recorded ({total - done} run now" in r.stderr
    assert len(model_requests(fake_openai)) - before == total - done  # finished cases were not asked again
    assert rows(db, "SELECT COUNT(*) FROM eval_results WHERE run_id = 'r1'") == [(total,)]
    assert rows(db, "SELECT status FROM eval_runs WHERE run_id = 'r1'") == [("finished",)]


def test_eval_compare_model_migration(work: Path) -> None:
    write_spec(work / "eval.yaml")
    assert sh("datasets", "import", "capitals", "capitals.jsonl", "-c", "shipyard.yaml", cwd=work).returncode == 0
    r = sh("eval", "compare", "eval.yaml", "--from", "good", "--to", "bad", "--pairwise-judge", "judge",
           "--json", "cmp.json", "--html", "cmp.html", "--cases-csv", "cases.csv", "--fail-on-regression",
           "--no-progress", cwd=work)
    assert r.returncode == 1, r.stderr  # the candidate regresses: the migration is gated
    assert "Model migration: terse/good → terse/bad" in r.stdout and "regressions (baseline passed" in r.stdout
    data = json.loads((work / "cmp.json").read_text())
    hard = sum(1 for it in items(16) if it["variables"]["country"] in HARD)
    (m1, m2) = data["migration"]
    assert m1["diff"]["regressions"] == hard and m1["diff"]["fixes"] == 0 and m1["diff"]["compared"] == 16
    assert len(m1["cases"]) == 16 and m1["baseline"]["model"] == "good" and m1["candidate"]["model"] == "bad"
    (pw,) = [p for p in data["pairwise"] if p["a"] == "terse/good"]
    assert pw["a_wins"] == hard and pw["b_wins"] == 0 and pw["ties"] == 16 - hard
    assert "Case by case" in (work / "cmp.html").read_text()
    lines = (work / "cases.csv").read_text().splitlines()
    assert len(lines) == 1 + 32 and lines[0].startswith("case_id,rep,baseline_variant")
    run_id = data["run"]["run_id"]
    r = sh("eval", "compare", "--run", run_id, "--from", "good", "--to", "bad", "-c", "shipyard.yaml",
           "--json", "-", cwd=work)
    assert r.returncode == 0 and len(json.loads(r.stdout)["migration"]) == 2
    r = sh("eval", "compare", "eval.yaml", "--from", "good", "--to", "nope", "--no-progress", cwd=work)
    assert r.returncode == 2 and "model 'nope' is neither an alias" in r.stderr


def test_judge_alignment_from_a_labels_file(work: Path, fake_openai) -> None:
    # outputs: cases 0-5 name the capital, 6-9 do not
    good_cases = {f"Q{i:02}" for i in range(6)}

    def reply(body):
        text = "\n".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))
        marker = next(t for t in (f"Q{i:02}" for i in range(10)) if t in text)
        if not is_judge(body):
            return "The capital is Paris." if marker in good_cases else "No idea."
        if body["model"] == "judge-lenient" and marker == "Q03":
            return json.dumps({"thoughts": "hmm"})  # no verdict: an evaluator error
        ok = body["model"] == "judge-lenient" or "Paris" in graded_answer(body)
        return json.dumps({"pass": ok, "reason": "r"})

    fake_openai.reply_fn = reply
    with open(work / "q.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"id": f"case{i}", "variables": {"q": f"Q{i:02}"}}) + "\n")
    assert sh("datasets", "import", "q", "q.jsonl", "-c", "shipyard.yaml", cwd=work).returncode == 0
    (work / "eval.yaml").write_text(yaml.safe_dump({
        "name": "align", "config": "shipyard.yaml", "dataset": "q", "prompt": "Question {{ q }}", "models": ["good"],
        "criteria": {"correct": "The answer names the right capital."},
        "evaluators": [
            {"type": "judge", "name": "strict", "criterion": "correct", "model": "judge", "rubric": "Names the capital"},
            {"type": "judge", "name": "lenient", "criterion": "correct", "model": "judge-lenient", "rubric": "Is fine"},
            {"type": "length", "name": "short", "criterion": "brief", "max": 10}]}))
    r = sh("eval", "run", "eval.yaml", "--run-id", "a1", "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    # humans: pass 0-4 and 7; fail 5, 6, 8, 9 -> strict judge: tp 5, fp 1, tn 3, fn 1
    human = {i: i in (0, 1, 2, 3, 4, 7) for i in range(10)}
    with open(work / "labels.csv", "w") as f:
        f.write("case_id,criterion,label\n")
        for i, ok in human.items():
            f.write(f"case{i},correct,{'pass' if ok else 'fail'}\n")
        f.write("case1,correct,maybe\n")  # bad row: reported with its line number, skipped
    r = sh("eval", "align", "eval.yaml", "--labels", "labels.csv", "--run", "a1", "--json", "-", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "labels.csv: line 12: label must be pass or fail" in r.stderr
    rep = json.loads(r.stdout)
    (crit,) = rep["criteria"]
    assert crit["criterion"] == "correct" and crit["labels"] == 10 and crit["selected"] == "strict"
    strict, lenient = sorted(crit["judges"], key=lambda j: j["judge"], reverse=True)
    assert strict["n"] == 10 and strict["errors"] == 0
    assert strict["confusion"] == {"tp": 5, "tn": 3, "fp": 1, "fn": 1}
    assert strict["agreement"] == pytest.approx(0.8)
    assert strict["kappa"] == pytest.approx((0.8 - 0.52) / (1 - 0.52))
    assert strict["tpr"] == pytest.approx(5 / 6) and strict["tnr"] == pytest.approx(0.75)
    assert strict["coverage"] == pytest.approx(0.75) and strict["false_failure_rate"] == pytest.approx(1 / 6)
    assert strict["alignment"] == pytest.approx(2 * 0.75 * (5 / 6) / (0.75 + 5 / 6))
    assert strict["selected"] and not lenient["selected"]
    assert lenient["errors"] == 1 and lenient["n"] == 9 and lenient["kappa"] == pytest.approx(0.0)
    assert lenient["coverage"] == 0 and lenient["alignment"] == 0
    # the same labels by trace id, judged now (not from the run): the same kappa
    traces = dict(rows(work / "shipyard.db", "SELECT case_id, trace_id FROM eval_results WHERE run_id = 'a1'"))
    with open(work / "labels.jsonl", "w") as f:
        for i, ok in human.items():
            f.write(json.dumps({"trace_id": traces[f"case{i}"], "criterion": "correct", "label": ok}) + "\n")
    r = sh("eval", "align", "eval.yaml", "--labels", "labels.jsonl", "--json", "-", cwd=work)
    assert r.returncode == 0, r.stderr
    live = json.loads(r.stdout)["criteria"][0]
    strict_live = next(j for j in live["judges"] if j["judge"] == "strict")
    assert strict_live["kappa"] == pytest.approx(strict["kappa"]) and strict_live["version"] == 1
    assert live["version"] == 1
    # the rubric changes: a new judge version; the criterion's description stays: same version
    spec_ = yaml.safe_load((work / "eval.yaml").read_text())
    spec_["evaluators"][0]["rubric"] = "Names the capital city correctly"
    (work / "eval.yaml").write_text(yaml.safe_dump(spec_))
    r = sh("eval", "align", "eval.yaml", "--labels", "labels.jsonl", "--json", "-", cwd=work)
    again = json.loads(r.stdout)["criteria"][0]
    assert next(j for j in again["judges"] if j["judge"] == "strict")["version"] == 2 and again["version"] == 1
    r = sh("eval", "judges", "--spec", "eval.yaml", "--json", cwd=work)
    versions = [(j["judge"], j["version"]) for j in json.loads(r.stdout)]
    assert ("strict", 1) in versions and ("strict", 2) in versions and ("lenient", 1) in versions
    r = sh("eval", "align", "eval.yaml", "--labels", "labels.jsonl", cwd=work)
    assert "★ selected" in r.stdout and "Cohen" in r.stdout


def test_pytest_plugin_runs_dataset_cases_as_tests(work: Path) -> None:
    assert sh("datasets", "import", "capitals", "capitals.jsonl", "-c", "shipyard.yaml", cwd=work).returncode == 0
    (work / "test_capitals.py").write_text('''
import pytest
from shipyard.testing import assert_contains, assert_judge, assert_schema, check


@pytest.mark.shipyard_dataset("capitals", limit=4)
def test_capital(case, shipyard_gateway):
    resp = shipyard_gateway.chat(model="bad", messages=[
        {"role": "user", "content": "Capital of " + case["input"]["variables"]["country"] + "?"}])
    check(resp, "contains", {"type": "judge", "model": "judge", "rubric": "names the capital"},
          case=case, gateway=shipyard_gateway)


def test_helpers():
    assert_contains("The capital is Paris.", "Paris")
    assert assert_schema('{"a": 1}', {"type": "object", "required": ["a"]}) == {"a": 1}


def test_readable_failure():
    assert_contains("I am not sure.", "Tokyo", "Japan")
''')
    env = {**os.environ}
    env.pop("SHIPYARD_CONFIG", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--shipyard-config",
                        "shipyard.yaml", "test_capitals.py"], cwd=work, capture_output=True, text=True, timeout=120,
                       env=env)
    out = r.stdout
    assert r.returncode == 1, out
    # items 0-3: France, Spain, Italy pass; Japan fails (the bad model does not know it)
    assert "test_capital[c000] PASSED" in out or "2 failed, 4 passed" in out, out
    assert "2 failed, 4 passed" in out
    assert "test_capital[c003]" in out and "FAIL contains [contains]: the answer does not contain 'Tokyo'" in out
    assert "FAIL judge [judge]: no capital" in out and "output:   'I am not sure.'" in out
    assert "shipyard eval check failed (1 of 1):" in out  # test_readable_failure
    assert "shipyard evals" in out and "checks:" in out
