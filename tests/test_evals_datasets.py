"""Datasets: versions, items, splits, files with bad rows, traces as a source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import client_for, fast_alias
from shipyard.errors import InvalidRequest, NotFound
from shipyard.evals.datasets import Datasets, import_file, items_from_traces, normalize_item, read_rows
from shipyard.store import TraceFilter, open_store


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(f"sqlite:///{tmp_path}/d.db")
    yield s
    s.close()


def q(i: int) -> dict:
    return {"variables": {"question": f"q{i}"}, "expected": f"a{i}"}


def test_create_versions_and_items(store) -> None:
    ds = Datasets(store)
    assert ds.create("faq", [q(1), q(2)], description="FAQ", source="test") == 1
    assert ds.create("faq", [q(3)]) == 2  # a new version holds exactly these items
    assert ds.add_items("faq", [q(4), q(5)]) == 3  # previous + new
    assert [v["item_count"] for v in ds.versions("faq")] == [2, 1, 3]
    assert [i["expected"] for i in ds.iter_items("faq")] == ["a3", "a4", "a5"]
    assert [i["expected"] for i in ds.iter_items("faq", version=1)] == ["a1", "a2"]
    item = next(ds.iter_items("faq", 1))
    assert set(item) == {"id", "input", "expected", "metadata", "split", "trace_id"}
    assert item["input"] == {"variables": {"question": "q1"}}
    assert item["split"] == "train" and item["trace_id"] is None and item["metadata"] == {}
    meta = ds.get("faq")
    assert meta["version"] == 3 and meta["item_count"] == 3 and meta["latest_version"] == 3
    assert ds.get("faq", 1)["source"] == "test"
    (row,) = ds.list()
    assert row["name"] == "faq" and row["version"] == 3 and row["item_count"] == 3 and row["created_at"]


def test_unknown_dataset_or_version_is_not_found(store) -> None:
    ds = Datasets(store)
    with pytest.raises(NotFound, match="'nope'"):
        ds.get("nope")
    with pytest.raises(NotFound, match="'nope'"):
        list(ds.iter_items("nope"))
    with pytest.raises(NotFound, match="'nope'"):
        ds.add_items("nope", [q(1)])
    ds.create("faq", [q(1)])
    with pytest.raises(NotFound, match="no version 7 \\(latest is 1\\)"):
        ds.iter_items("faq", version=7)


def test_item_shapes_and_validation() -> None:
    assert normalize_item({"input": "hi"})["input"] == {"messages": [{"role": "user", "content": "hi"}]}
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert normalize_item({"messages": msgs})["input"] == {"messages": msgs}
    assert normalize_item({"input": {"city": "Paris"}})["input"] == {"variables": {"city": "Paris"}}
    a, b = normalize_item({"input": "x", "expected": "y"}), normalize_item({"input": "x", "expected": "y"})
    assert a["id"] == b["id"]  # a stable content id
    for bad, msg in [({"input": 3}, "input must be"), ({"expected": 1}, "exactly one of"),
                     ({"input": "x", "split": "test"}, "split must be"), ({"input": "x", "colour": 1}, "unknown field"),
                     ({"messages": [{"content": "x"}]}, "role"), ("row", "JSON object")]:
        with pytest.raises(ValueError, match=msg):
            normalize_item(bad)


def test_invalid_item_publishes_nothing(store) -> None:
    ds = Datasets(store)
    ds.create("faq", [q(1)])
    with pytest.raises(InvalidRequest, match="line 2: .*exactly one of"):
        ds.create("faq", [q(2), {"expected": "orphan"}])
    assert ds.get("faq")["version"] == 1


def test_duplicate_ids_are_rejected(store) -> None:
    ds = Datasets(store)
    ds.create("faq", [{"id": "a", **q(1)}])
    with pytest.raises(InvalidRequest, match="duplicate item id 'a'"):
        ds.add_items("faq", [{"id": "a", **q(2)}])
    with pytest.raises(InvalidRequest, match="duplicate item id 'b'"):
        ds.create("other", [{"id": "b", **q(1)}, {"id": "b", **q(2)}])


def test_holdout_split_is_deterministic(store) -> None:
    ds = Datasets(store)
    items = [{"id": f"c{i}", **q(i)} for i in range(400)]
    ds.create("big", items, holdout=0.25)
    hold = {i["id"] for i in ds.iter_items("big", split="holdout")}
    train = {i["id"] for i in ds.iter_items("big", split="train")}
    assert not hold & train and len(hold | train) == 400
    assert 60 < len(hold) < 140
    assert ds.count("big", split="holdout") == len(hold) and ds.get("big")["train_count"] == len(train)
    ds.create("big", items, holdout=0.25)  # same ids, same split, in every version
    assert {i["id"] for i in ds.iter_items("big", split="holdout")} == hold
    ds.create("explicit", [{"input": "x", "split": "holdout"}, {"input": "y"}])
    assert [i["split"] for i in ds.iter_items("explicit")] == ["holdout", "train"]


def test_streams_across_pages_and_segments(store) -> None:
    ds = Datasets(store)
    ds.create("big", ({"id": f"{i:05}", **q(i)} for i in range(1203)))
    ds.add_items("big", ({"id": f"x{i:05}", **q(i)} for i in range(501)))
    ids = [i["id"] for i in ds.iter_items("big")]
    assert len(ids) == 1704 and len(set(ids)) == 1704
    assert ids[:2] == ["00000", "00001"] and ids[1203] == "x00000"
    assert ds.get_items("big", None, ["00007", "x00003", "missing"]).keys() == {"00007", "x00003"}


def test_jsonl_rows_report_line_numbers(tmp_path: Path, store) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join([json.dumps(q(1)), "{not json", "", json.dumps({"expected": "x"}), json.dumps(q(2))]) + "\n")
    rows = list(read_rows(f))
    assert [r[0] for r in rows] == [1, 2, 4, 5]
    ds = Datasets(store)
    rep = import_file(ds, "faq", f)
    assert rep.imported == 2 and rep.skipped == 2
    assert [e[0] for e in rep.errors] == [2, 4]
    assert "not valid JSON" in rep.errors[0][1] and "exactly one of" in rep.errors[1][1]
    with pytest.raises(InvalidRequest, match="line 2: not valid JSON"):
        import_file(ds, "faq", f, on_error="fail")
    assert ds.get("faq")["version"] == 1  # the failed import published nothing


def test_csv_variables_metadata_and_errors(tmp_path: Path, store) -> None:
    f = tmp_path / "d.csv"
    f.write_text('id,country,expected,metadata.lang,metadata\n'
                 'c1,France,Paris,fr,"{""tier"": 1}"\n'
                 'c2,"Multi\nline",X,en,\n'
                 'c3,Spain,Madrid,es,{bad\n'
                 'c4,Italy,Rome\n')
    ds = Datasets(store)
    rep = import_file(ds, "caps", f)
    assert rep.imported == 2
    assert [(line, msg.split(" ")[0]) for line, msg in rep.errors] == [(5, "column"), (6, "the")]
    c1, c2 = list(ds.iter_items("caps"))
    assert c1 == {"id": "c1", "input": {"variables": {"country": "France"}}, "expected": "Paris",
                  "metadata": {"tier": 1, "lang": "fr"}, "split": "train", "trace_id": None}
    assert c2["input"]["variables"]["country"] == "Multi\nline"
    g = tmp_path / "m.csv"
    g.write_text("input,expected\nWhat is 2+2?,4\n")
    import_file(ds, "math", g)
    assert next(ds.iter_items("math"))["input"] == {"messages": [{"role": "user", "content": "What is 2+2?"}]}


def test_items_from_traces(serve, fake_openai, tmp_path: Path) -> None:
    fake_openai.reply_text = "Four."
    db = tmp_path / "prod.db"
    server = serve({"store": f"sqlite:///{db}",
                    "providers": {"up": {"type": "openai", "base_url": fake_openai.base_url, "api_key": "k"}},
                    "models": {"chat": fast_alias({"provider": "up", "model": "gpt-4o-mini"}),
                               "other": fast_alias({"provider": "up", "model": "gpt-4o"})}})
    client = client_for(server)
    ids = []
    for i in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": f"2+2? #{i}"}], temperature=0)
        ids.append(raw.headers["x-shipyard-trace-id"])
    client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "eval"}],
                                   metadata={"eval_run": "r1"})  # eval traffic: left out
    server.flush()
    rows = list(items_from_traces(server.engine.store, filter=TraceFilter(alias="chat")))
    assert len(rows) == 3 and {r[0] for r in rows} == set(ids)
    item = normalize_item(dict(rows[0][1]))
    assert item["input"]["messages"][0]["content"].startswith("2+2?")
    assert item["expected"] == "Four." and item["trace_id"] in ids
    assert item["metadata"]["alias"] == "chat" and item["metadata"]["params"] == {"temperature": 0}
    picked = list(items_from_traces(server.engine.store, trace_ids=[ids[1], "0" * 32]))
    assert picked[0][1]["trace_id"] == ids[1]
    assert isinstance(picked[1][1], ValueError) and "no such trace" in str(picked[1][1])
