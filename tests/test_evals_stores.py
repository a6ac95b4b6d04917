"""Datasets, runs, reports and judge alignment behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Iterator

import pytest

from services import drop_postgres_database, new_postgres_database
from shipyard.errors import NotFound
from shipyard.evals.alignment import Label, Registry, align
from shipyard.evals.datasets import Datasets
from shipyard.evals.evaluators import build_evaluators
from shipyard.evals.report import Gate, baseline_diffs, migration, migration_pairs
from shipyard.evals.results import EvalStore
from shipyard.evals.runner import run_eval
from shipyard.evals.spec import load_spec
from shipyard.store import open_store
from test_evals_support import HARD, config, items, rules, spec


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/evals.db"
        return
    db = new_postgres_database(request.getfixturevalue("postgres_url"), prefix="evals")
    yield db
    drop_postgres_database(db)


def test_datasets_on_each_store(url: str) -> None:
    store = open_store(url)
    try:
        ds = Datasets(store)
        assert ds.create("caps", items(700), holdout=0.3) == 1
        assert ds.add_items("caps", [{"id": "extra", "input": "hi", "expected": {"a": [1, 2]}}]) == 2
        assert ds.count("caps") == 701 and ds.count("caps", 1) == 700
        assert len(list(ds.iter_items("caps", split="holdout"))) == ds.get("caps")["holdout_count"]
        got = [i["id"] for i in ds.iter_items("caps")]
        assert got[0] == "c000" and got[-1] == "extra" and len(got) == 701
        assert ds.get_items("caps", 2, ["extra"])["extra"]["expected"] == {"a": [1, 2]}
        assert [d["name"] for d in ds.list()] == ["caps"]
        with pytest.raises(NotFound):
            ds.get("caps", 3)
    finally:
        store.close()


def test_run_report_and_alignment_on_each_store(url: str, fake_openai, tmp_path: Path) -> None:
    import yaml

    fake_openai.reply_fn = rules
    cfg = config(fake_openai, "unused.db")
    cfg["store"] = url
    (tmp_path / "shipyard.yaml").write_text(yaml.safe_dump(cfg))
    store = open_store(url)
    try:
        Datasets(store).create("capitals", items(12))
    finally:
        store.close()
    loaded = load_spec(spec(tmp_path / "shipyard.yaml", prompts={"t": {"prompt": "Capital of {{ country }}?"}},
                            evaluators=["contains", {"type": "judge", "name": "correct", "model": "judge",
                                                     "rubric": "names the capital"},
                                        {"type": "pairwise", "model": "judge", "against": "t/good"}]))
    first = run_eval(loaded, progress=False, repeat=2)
    second = run_eval(loaded, progress=False)
    store = open_store(url)
    try:
        evs = EvalStore(store)
        summ = evs.summary(first.run_id)
        rows = {v["variant"]: v for v in summ["variants"]}
        hard = sum(1 for it in items(12) if it["variables"]["country"] in HARD)
        assert rows["t/good"]["pass_rate"] == 1.0 and rows["t/bad"]["failed"] == 2 * hard
        assert rows["t/bad"]["repeats"]["flip_rate"] == 0 and rows["t/good"]["latency_p95"] is not None
        assert summ["pairwise"][0]["a_wins"] == 2 * hard
        assert evs.summary(first.run_id, ci="bootstrap")["variants"][0]["score_ci"] is not None
        summ2 = evs.summary(second.run_id)
        diffs = baseline_diffs(evs, summ2, first.run_id)
        assert all(d["regressions"] == 0 and d["fixes"] == 0 for d in diffs)
        assert not Gate(fail_under=0.5, fail_on_regression=True).check(summ2, diffs)
        pairs = migration_pairs(evs.variants(second.run_id), "good", "bad")
        (m,) = migration(evs, summ2, pairs)
        assert m["diff"]["regressions"] == hard and len(m["cases"]) == 12
        assert len(evs.list_runs()) == 2 and evs.list_runs()[0]["done"] == 24
        # alignment from the stored verdicts of the judge, by case id
        labels = [Label("correct", it["variables"]["country"] not in HARD, case_id=it["id"], variant="t/bad", rep=0)
                  for it in items(12)]
        evaluators = build_evaluators(loaded.raw["evaluators"], tmp_path)
        report = asyncio.run(align(store, evaluators, labels, run_id=first.run_id))
        (crit,) = report["criteria"]
        (judge,) = [j for j in crit["judges"] if j["judge"] == "correct"]
        assert judge["agreement"] == 1.0 and judge["kappa"] == pytest.approx(1.0) and judge["selected"]
        assert Registry(store).judges("correct")[0]["version"] == 1
        assert json.dumps(report, default=str)
    finally:
        store.close()
