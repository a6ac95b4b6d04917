"""The ClickHouse store, its SQL run for real on chDB (ClickHouse embedded in-process,
through clickhouse-connect's chDB backend: the same client API and SQL as over HTTP).

Mirrors tests/test_store_conformance.py where the semantics are the same; where
ClickHouse differs on purpose it says so (summary fields come from the earliest span that
has them, latency quantiles are t-digest estimates)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from test_store_conformance import DAY, all_pages, dump, ids, nearest_rank, span

from shipyard.errors import ConfigError, InvalidRequest
from shipyard.store import StoreUnavailable, TraceFilter, open_store
from shipyard.store.base import encode_cursor
from shipyard.store.clickhouse import ClickHouseStore, parse_url
from shipyard.tracing.span import Span, new_trace_id

NEEDS_CHDB = "runs ClickHouse SQL on chDB: pip install -e '.[clickhouse-test]'"


def tdigest_close(estimate: float, true: float, rel: float = 0.25) -> bool:
    return abs(estimate - true) <= rel * true


@pytest.fixture
def db_name() -> Iterator[str]:
    pytest.importorskip("chdb", reason=NEEDS_CHDB)
    pytest.importorskip("clickhouse_connect", reason=NEEDS_CHDB)
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    s = ClickHouseStore(f"chdb://memory?database={name}")
    s._cmd(f"DROP DATABASE IF EXISTS {name}")
    s.close()


@pytest.fixture
def store(db_name: str) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore(f"chdb://memory?database={db_name}")
    yield s
    s.close()


# ---- schema -------------------------------------------------------------------------


def test_tables_engines_order_and_ttl(store: ClickHouseStore) -> None:
    rows = store._q("SELECT name, engine, sorting_key, create_table_query FROM system.tables "
                    "WHERE database = {db:String} ORDER BY name", {"db": store.db})
    by = {r[0]: r for r in rows}
    assert by["spans"][1] == "MergeTree" and by["spans"][2] == "start_time, trace_id"
    assert by["trace_summaries"][1] == "AggregatingMergeTree" and by["trace_summaries"][2] == "day, trace_id"
    assert by["llm_rollup_1m"][1] == "AggregatingMergeTree"
    assert by["trace_summaries_mv"][1] == by["llm_rollup_1m_mv"][1] == "MaterializedView"
    for t in ("spans", "trace_summaries", "llm_rollup_1m"):
        assert "TTL" in by[t][3] and "toIntervalDay(90)" in by[t][3], t


def test_migrate_is_idempotent_and_follows_ttl_days(db_name: str) -> None:
    keeper = ClickHouseStore(f"chdb://memory?database={db_name}")  # chDB's in-memory data lives while a client does
    s1 = ClickHouseStore(f"chdb://memory?database={db_name}")
    sp = span(alias="chat")
    s1.write_spans([sp], dump)
    assert s1.migrate() == []
    s1.close()
    s2 = ClickHouseStore(f"chdb://memory?database={db_name}&ttl_days=7")  # reopen: data kept, TTL changed
    assert s2.get_trace(sp.trace_id)["span_count"] == 1

    def create(table: str) -> str:
        return keeper._q("SELECT create_table_query FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                     {"d": db_name, "t": table})[0][0]

    assert "toIntervalDay(7)" in create("spans") and "toIntervalDay(7)" in create("llm_rollup_1m")
    s2.close()
    s3 = ClickHouseStore(f"chdb://memory?database={db_name}&ttl_days=0")
    assert " TTL " not in create("spans")
    s3.close()
    keeper.close()


def test_ttl_retires_old_rows(store: ClickHouseStore) -> None:
    old = span(start=time.time() - 200 * DAY, kind="llm", model="m")
    recent = span(kind="llm", model="m")
    store.write_spans([old, recent], dump)
    for t in ("spans", "trace_summaries", "llm_rollup_1m"):
        store._cmd(f"OPTIMIZE TABLE {store.db}.{t} FINAL")  # a merge applies the TTL
    assert store._q(f"SELECT count() FROM {store.db}.spans")[0][0] == 1
    assert ids(store, start=time.time() - 365 * DAY) == [recent.trace_id]


# ---- spans and summaries ------------------------------------------------------------


def test_span_round_trip(store: ClickHouseStore) -> None:
    sp = span(alias="chat", provider="primary", model="gpt-4o-mini", response_model="gpt-4o-mini-2024",
              user_id="u1", session_id="s1", input_tokens=11, output_tokens=7, cost_usd=0.000123, ttft_ms=12.5,
              input={"messages": [{"role": "user", "content": "hi ✓ ünïcode"}]}, output={"id": "x"},
              attributes={"attempts": [{"provider": "primary", "outcome": "ok"}]}, completion_id="chatcmpl-1")
    store.write_spans([sp], dump)
    t = store.get_trace(sp.trace_id)
    assert t["span_count"] == 1 and t["status"] == "ok" and t["model"] == "gpt-4o-mini-2024"
    (s,) = t["spans"]
    assert s["input"] == {"messages": [{"role": "user", "content": "hi ✓ ünïcode"}]}
    assert s["output"] == {"id": "x"} and s["attributes"]["attempts"][0]["outcome"] == "ok"
    assert s["duration_ms"] == pytest.approx(500, abs=1)
    assert s["start_time"] == sp.start_time  # full precision
    assert s["cost_usd"] == pytest.approx(0.000123) and s["ttft_ms"] == 12.5
    assert (s["input_tokens"], s["output_tokens"], s["cached_tokens"]) == (11, 7, None)
    assert store.find_span_by_completion("chatcmpl-1") == {"span_id": sp.span_id, "trace_id": sp.trace_id}
    assert store.find_span_by_completion("chatcmpl-none") is None


def test_spans_are_immutable(store: ClickHouseStore) -> None:
    first = span(span_id="a" * 16, alias="chat", input_tokens=10, output_tokens=5, cost_usd=0.5, kind="llm",
                 model="m", input={"q": "original words"})
    again = span(first.trace_id, span_id=first.span_id, alias="other", input_tokens=99, output_tokens=99,
                 cost_usd=9.0, status="error", error="boom", kind="llm", model="m", input={"q": "replacement"})
    store.write_spans([first], dump)
    store.write_spans([again], dump)
    store.write_spans([first, again], dump)
    t = store.get_trace(first.trace_id)
    assert t["span_count"] == 1 and len(t["spans"]) == 1 and t["status"] == "ok"
    assert (t["input_tokens"], t["output_tokens"], t["cost_usd"]) == (10, 5, 0.5)
    assert ids(store, q="replacement") == [] and ids(store, q="original") == [first.trace_id]
    (row,) = store.dashboard(first.start_time - 60, first.start_time + 60, 60)
    assert row["requests"] == 1 and row["errors"] == 0


def test_trace_summary_aggregates_out_of_order_spans(store: ClickHouseStore) -> None:
    tid = new_trace_id()
    t0 = time.time() - 100
    root = span(tid, start=t0, dur=10, name="root", kind="chain")
    a = span(tid, start=t0 + 1, dur=2, alias="chat", model="m", input_tokens=10, output_tokens=3, cost_usd=0.25)
    b = span(tid, start=t0 + 4, dur=3, alias="chat", model="m", input_tokens=5, output_tokens=2, cost_usd=None,
             status="error", error="upstream failed")
    c = span(tid, start=t0 + 8, dur=1, input_tokens=1, output_tokens=1, cost_usd=0.5)
    store.write_spans([c], dump)
    store.write_spans([b, a], dump)
    store.write_spans([root], dump)
    t = store.get_trace(tid)
    assert t["span_count"] == 4 and t["name"] == "root" and t["status"] == "error"
    assert t["start_time"] == pytest.approx(t0) and t["end_time"] == pytest.approx(t0 + 10)
    assert t["duration_ms"] == pytest.approx(10_000, abs=1)
    assert t["input_tokens"] == 16 and t["output_tokens"] == 6 and t["cost_usd"] == pytest.approx(0.75)
    assert [s["name"] for s in t["spans"]][0] == "root"
    store.write_spans([span(tid, start=t0 + 9)], dump)
    assert store.get_trace(tid)["status"] == "error"
    store._cmd(f"OPTIMIZE TABLE {store.db}.trace_summaries FINAL")  # merged states read the same
    assert store.get_trace(tid)["span_count"] == 5


def test_summary_is_the_same_in_one_batch_or_many(store: ClickHouseStore) -> None:
    t0 = time.time() - 500
    one, many = new_trace_id(), new_trace_id()

    def family(tid: str) -> list[Span]:
        return [
            span(tid, start=t0 + 5, dur=1, name="late", model="m2", user_id=None, input_tokens=None, cost_usd=None),
            span(tid, start=t0, dur=None, name="first", alias="a", model="m1", user_id="u", input_tokens=3,
                 cost_usd=0.5, status="error"),
            span(tid, start=t0 + 2, dur=20, name="mid", alias="b", input_tokens=4, output_tokens=1, cost_usd=0.25),
        ]

    store.write_spans(family(one), dump)
    for s in family(many):
        store.write_spans([s], dump)
    a, b = store.get_trace(one), store.get_trace(many)
    keys = ["start_time", "end_time", "name", "status", "span_count", "alias", "model", "user_id",
            "input_tokens", "output_tokens", "cost_usd", "duration_ms"]
    assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys})
    assert a["name"] == "first" and a["status"] == "error"
    # ClickHouse: the earliest span that has a value names it (SQL stores: the first written)
    assert a["alias"] == "a" and a["model"] == "m1" and a["user_id"] == "u"
    assert a["duration_ms"] == pytest.approx(22_000, abs=1)


def test_cost_and_tokens_stay_null_when_unknown(store: ClickHouseStore) -> None:
    tid = new_trace_id()
    store.write_spans([span(tid, input_tokens=3, output_tokens=4, cost_usd=None)], dump)
    store.write_spans([span(tid, input_tokens=1, output_tokens=1, cost_usd=None)], dump)
    t = store.get_trace(tid)
    assert t["cost_usd"] is None and t["input_tokens"] == 4
    (row,) = [r for r in store.list_traces(TraceFilter())[0] if r["trace_id"] == tid]
    assert row["cost_usd"] is None
    tool = span(kind="tool", name="search")
    store.write_spans([tool, span(tool.trace_id, kind="tool")], dump)
    t = store.get_trace(tool.trace_id)
    assert t["input_tokens"] is None and t["output_tokens"] is None and t["cost_usd"] is None
    store.write_spans([span(tid, cost_usd=0.125)], dump)
    assert store.get_trace(tid)["cost_usd"] == pytest.approx(0.125)


def test_get_trace_unknown_is_none(store: ClickHouseStore) -> None:
    assert store.get_trace("0" * 32) is None


def test_nul_characters_and_unicode_are_stored(store: ClickHouseStore) -> None:
    sp = span(name="odd\x00name", error="e\x00", input={"text": "zero \x00 byte, café naïve"}, status="error")
    store.write_spans([sp], dump)
    t = store.get_trace(sp.trace_id)
    assert t["spans"][0]["input"] == {"text": "zero \x00 byte, café naïve"}
    assert t["spans"][0]["name"] == "odd\x00name"
    assert ids(store, q="café") == [sp.trace_id] and ids(store, q="NAÏVE") == [sp.trace_id]


# ---- listing ----------------------------------------------------------------------------


def test_default_window_is_seven_days(store: ClickHouseStore) -> None:
    now = time.time()
    recent, edge = span(start=now - 3600), span(start=now - 6.9 * DAY)
    old, ancient = span(start=now - 7.1 * DAY), span(start=now - 12 * DAY)
    store.write_spans([recent, edge, old, ancient], dump)
    rows, cursor = store.list_traces(TraceFilter())
    assert [r["trace_id"] for r in rows] == [recent.trace_id, edge.trace_id] and cursor is None
    assert ids(store, start=now - 30 * DAY) == [recent.trace_id, edge.trace_id, old.trace_id, ancient.trace_id]
    assert ids(store, start=now - 30 * DAY, end=now - DAY) == [edge.trace_id, old.trace_id, ancient.trace_id]
    assert ids(store, end=now - 10 * DAY) == [ancient.trace_id]


def test_a_trace_is_listed_by_its_start_even_with_later_spans(store: ClickHouseStore) -> None:
    now = time.time()
    tid = new_trace_id()
    store.write_spans([span(tid, start=now - 3 * DAY, name="root")], dump)
    store.write_spans([span(tid, start=now - 1 * DAY, name="late child", input={"t": "tardy"})], dump)
    assert ids(store, start=now - 4 * DAY, end=now - 2 * DAY) == [tid]
    assert ids(store, start=now - 2 * DAY) == []  # its start is outside this window
    assert ids(store, start=now - 4 * DAY, q="tardy") == [tid]
    (row,) = store.list_traces(TraceFilter(start=now - 4 * DAY))[0]
    assert row["span_count"] == 2 and row["name"] == "root"


def test_equality_filters(store: ClickHouseStore) -> None:
    now = time.time()
    a = span(start=now - 30, alias="chat", user_id="alice", model="m1", session_id="s1")
    b = span(start=now - 20, alias="chat", user_id="bob", model="m2", status="error", error="x")
    c = span(start=now - 10, alias="summarize", user_id="alice", model="m1")
    store.write_spans([a, b, c], dump)
    assert ids(store) == [c.trace_id, b.trace_id, a.trace_id]
    assert ids(store, alias="chat") == [b.trace_id, a.trace_id]
    assert ids(store, user_id="alice") == [c.trace_id, a.trace_id]
    assert ids(store, status="error") == [b.trace_id]
    assert ids(store, status="ok", alias="chat") == [a.trace_id]
    assert ids(store, model="m2") == [b.trace_id]
    assert ids(store, session_id="s1") == [a.trace_id]
    assert ids(store, alias="nope") == []


def test_cost_and_latency_filters(store: ClickHouseStore) -> None:
    now = time.time()
    cheap = span(start=now - 40, dur=0.1, cost_usd=0.001)
    mid = span(start=now - 30, dur=1.0, cost_usd=0.01)
    dear = span(start=now - 20, dur=5.0, cost_usd=0.5)
    unknown = span(start=now - 10, dur=None, cost_usd=None)
    store.write_spans([cheap, mid, dear, unknown], dump)
    assert ids(store, min_cost=0.01) == [dear.trace_id, mid.trace_id]
    assert ids(store, max_cost=0.01) == [mid.trace_id, cheap.trace_id]
    assert ids(store, min_cost=0.005, max_cost=0.1) == [mid.trace_id]
    assert ids(store, min_cost=1) == []
    assert ids(store, min_latency_ms=1000) == [dear.trace_id, mid.trace_id]
    assert ids(store, max_latency_ms=999) == [cheap.trace_id]
    assert ids(store, min_latency_ms=50, max_latency_ms=2000, min_cost=0.005) == [mid.trace_id]
    tid = new_trace_id()
    store.write_spans([span(tid, start=now - 5, dur=0.2, cost_usd=0.3), span(tid, start=now - 4, dur=3, cost_usd=0.3)],
                      dump)
    assert tid in ids(store, min_cost=0.6, min_latency_ms=3500)


def test_free_text_search(store: ClickHouseStore) -> None:
    now = time.time()
    a = span(start=now - 50, input={"messages": [{"role": "user", "content": "Where is my Refund? Order #A-1234"}]},
             output={"choices": [{"message": {"content": "Your refund was issued on Monday."}}]})
    b = span(start=now - 40, input={"messages": [{"role": "user", "content": "What's the shipping policy for gpt-4o?"}]})
    tid = new_trace_id()
    c1 = span(tid, start=now - 30, kind="chain", name="agent", input={"task": "plan"})
    c2 = span(tid, start=now - 29, input={"messages": [{"content": "nested"}]},
              output={"deep": [{"x": {"y": ["the warehouse in Zürich"]}}]})
    old = span(start=now - 9 * DAY, input={"text": "refund from long ago"})
    keys_only = span(start=now - 20, input={"refundable": True, "warehouse_code": 12})
    store.write_spans([a, b, c1, c2, old, keys_only], dump)
    assert ids(store, q="refund") == [a.trace_id]
    assert ids(store, q="REFUND issued") == [a.trace_id]
    assert ids(store, q="refund shipping") == []
    assert ids(store, q="a-1234") == [a.trace_id]
    assert ids(store, q="1234") == [a.trace_id]
    assert ids(store, q="gpt-4o") == [b.trace_id]
    assert ids(store, q="zürich warehouse") == [tid]
    assert ids(store, q="refund", start=now - 30 * DAY) == [a.trace_id, old.trace_id]
    assert ids(store, q="refundable") == []
    assert ids(store, q="refund", user_id="nobody") == []
    assert ids(store, q="monday", status="ok") == [a.trace_id]
    for bad in ("?!", " ".join(f"w{i}" for i in range(17))):
        with pytest.raises(InvalidRequest) as ei:
            store.list_traces(TraceFilter(q=bad))
        assert ei.value.param == "q"


def test_cursor_pagination_visits_every_trace_once(store: ClickHouseStore) -> None:
    now = time.time()
    spans = [span(start=now - 50) for _ in range(5)] + [span(start=now - i) for i in range(1, 5)]
    store.write_spans(spans, dump)
    pages = all_pages(store, limit=2)
    assert all(len(p) == 2 for p in pages[:-1]) and 1 <= len(pages[-1]) <= 2
    seen = [tid for p in pages for tid in p]
    assert sorted(seen) == sorted(s.trace_id for s in spans) and len(seen) == len(set(seen))
    rows, cursor = store.list_traces(TraceFilter(limit=100))
    assert cursor is None and [r["trace_id"] for r in rows] == seen


def test_cursor_pagination_with_filters_and_search(store: ClickHouseStore) -> None:
    now = time.time()
    rng = random.Random(5)
    mine, others = [], []
    for i in range(60):
        start = now - 100 + (i // 3)
        if rng.random() < 0.5:
            mine.append(span(start=start, user_id="u", cost_usd=0.1, input={"t": f"needle {i}"}))
        else:
            others.append(span(start=start, user_id="v", cost_usd=0.001, input={"t": f"hay {i}"}))
    store.write_spans(mine + others, dump)
    want = sorted(s.trace_id for s in mine)
    for kw in ({"user_id": "u"}, {"min_cost": 0.05}, {"q": "needle"}, {"q": "needle", "user_id": "u"}):
        seen = [tid for p in all_pages(store, limit=7, **kw) for tid in p]
        assert sorted(seen) == want and len(seen) == len(set(seen)), kw


def test_exact_page_limit_and_bad_cursors(store: ClickHouseStore) -> None:
    store.write_spans([span(start=time.time() - i - 1) for i in range(4)], dump)
    assert [len(p) for p in all_pages(store, limit=2)] == [2, 2]
    rows, cursor = store.list_traces(TraceFilter(limit=0))
    assert len(rows) == 1 and cursor is not None
    for bad in ("not-a-cursor!!", "Zm9v", encode_cursor(1.0, "x")[:-4] + "$$$$", "bm90fGE="):
        with pytest.raises(InvalidRequest) as ei:
            store.list_traces(TraceFilter(cursor=bad))
        assert ei.value.param == "cursor"


# ---- dashboard --------------------------------------------------------------------------


def test_dashboard_against_hand_computed_numbers(store: ClickHouseStore) -> None:
    base = (int(time.time() // 3600) - 3) * 3600.0
    llm = dict(kind="llm")
    data = [
        span(start=base + 10, dur=0.100, model="alias-a", response_model="m-a", cost_usd=0.01,
             input_tokens=10, output_tokens=5, **llm),
        span(start=base + 20, dur=0.200, model="m-a", cost_usd=None, input_tokens=20, output_tokens=10, **llm),
        span(start=base + 30, dur=0.400, model="m-a", cost_usd=0.02, status="error", error="x", **llm),
        span(start=base + 15, dur=0.050, model="m-b", cost_usd=None, **llm),
        span(start=base + 12, dur=9.0, kind="tool", model="m-a", cost_usd=5.0),
        span(start=base + 70, dur=0.800, model="m-a", cost_usd=0.03, input_tokens=1, output_tokens=1, **llm),
        span(start=base + 3600 + 5, dur=1.6, model="m-a", cost_usd=0.04, **llm),
        span(start=base - 3600, dur=1.0, model="m-a", cost_usd=1.0, **llm),
    ]
    store.write_spans(data[:3], dump)
    store.write_spans(data[3:], dump)

    rows = store.dashboard(base, base + 2 * 3600, 60)
    by = {(r["bucket_start"] - base, r["model"]): r for r in rows}
    assert set(by) == {(0, "m-a"), (0, "m-b"), (60, "m-a"), (3600, "m-a")}
    m0 = by[(0, "m-a")]
    assert (m0["requests"], m0["errors"], m0["input_tokens"], m0["output_tokens"]) == (3, 1, 30, 15)
    assert m0["cost_usd"] == pytest.approx(0.03)
    assert tdigest_close(m0["p50_ms"], 200) and 100 <= m0["p95_ms"] <= 400
    b0 = by[(0, "m-b")]
    assert (b0["requests"], b0["errors"], b0["cost_usd"], b0["input_tokens"]) == (1, 0, None, None)
    assert b0["p50_ms"] == pytest.approx(50, abs=0.01) and b0["p95_ms"] == pytest.approx(50, abs=0.01)
    assert by[(60, "m-a")]["p50_ms"] == pytest.approx(800, abs=0.01)
    assert rows == sorted(rows, key=lambda r: (r["bucket_start"], r["model"]))

    hourly = store.dashboard(base, base + 2 * 3600, 3600)
    assert [(r["bucket_start"] - base, r["model"], r["requests"]) for r in hourly] == [
        (0, "m-a", 4), (0, "m-b", 1), (3600, "m-a", 1)]
    h0 = hourly[0]
    assert h0["cost_usd"] == pytest.approx(0.06) and h0["errors"] == 1
    assert 200 <= h0["p50_ms"] <= 400 and h0["p95_ms"] <= 800  # t-digest merged across minutes
    edge = store.dashboard(base + 60, base + 2 * 3600, 3600)
    assert [(r["bucket_start"] - base, r["model"], r["requests"]) for r in edge] == [(0, "m-a", 1), (3600, "m-a", 1)]
    raw = store.dashboard(base, base + 120, 30)
    assert [(r["bucket_start"] - base, r["model"], r["requests"], r["errors"]) for r in raw] == [
        (0, "m-a", 2, 0), (0, "m-b", 1, 0), (30, "m-a", 1, 1), (60, "m-a", 1, 0)]
    assert store.dashboard(base + 7200, base, 60) == []


def test_dashboard_percentiles_of_many_calls(store: ClickHouseStore) -> None:
    rng = random.Random(11)
    base = (int(time.time() // 3600) - 2) * 3600.0
    durations = [rng.lognormvariate(6, 1.0) for _ in range(2000)]
    spans = [span(start=base + 60 + (i % 600) / 10, dur=d / 1000, model="m", **{"kind": "llm"})
             for i, d in enumerate(durations)]
    for k in range(0, len(spans), 500):
        store.write_spans(spans[k:k + 500], dump)
    (row,) = store.dashboard(base, base + 3600, 3600)
    assert row["requests"] == 2000
    assert tdigest_close(row["p50_ms"], nearest_rank(durations, 0.5), 0.05)
    assert tdigest_close(row["p95_ms"], nearest_rank(durations, 0.95), 0.05)
    raw = store.dashboard(base, base + 3600, 45)  # from the spans: t-digest per bucket there too
    assert sum(r["requests"] for r in raw) == 2000 and len(raw) == 2


def test_dashboard_rejects_bad_buckets(store: ClickHouseStore) -> None:
    now = time.time()
    for bad in (0, -60, 1.5, True):
        with pytest.raises(InvalidRequest) as ei:
            store.dashboard(now - 3600, now, bad)
        assert ei.value.param == "bucket_s"
    with pytest.raises(InvalidRequest):
        store.dashboard(now - 365 * DAY, now, 60)


# ---- retention ----------------------------------------------------------------------------


def test_purge_deletes_old_traces_spans_and_rollups(store: ClickHouseStore) -> None:
    now = time.time()
    cutoff = (now - 30 * DAY) // 3600 * 3600
    old = []
    for i in range(25):
        tid = new_trace_id()
        old += [span(tid, start=cutoff - DAY - i * 60, model="m", kind="llm", input={"t": "ancient words"},
                     cost_usd=0.1),
                span(tid, start=cutoff - DAY - i * 60 + 1, kind="tool", output={"t": "ancient tool"})]
    straddling = new_trace_id()
    old += [span(straddling, start=cutoff - 5, model="m", kind="llm", input={"t": "ancient"}),
            span(straddling, start=cutoff + 5, model="m", kind="llm", input={"t": "ancient"})]
    recent = [span(start=now - 100, model="m", kind="llm", input={"t": "ancient words"}),
              span(start=cutoff + 3600, model="m", kind="llm", input={"t": "ancient words"})]
    store.write_spans(old + recent, dump)
    wide = dict(start=now - 60 * DAY)
    assert len(ids(store, q="ancient", **wide)) == 28
    assert store.purge(cutoff) == len(old)
    assert sorted(ids(store, **wide)) == sorted(s.trace_id for s in recent)
    assert sorted(ids(store, q="ancient", **wide)) == sorted(s.trace_id for s in recent)
    assert store.get_trace(straddling) is None
    dash = store.dashboard(cutoff - 10 * DAY, now + 60, 86400)
    assert sum(r["requests"] for r in dash) == 2 + 1
    assert store.purge(cutoff) == 0


# ---- concurrency ------------------------------------------------------------------------


def test_concurrent_writers_and_readers(store: ClickHouseStore) -> None:
    now = time.time()
    traces = [new_trace_id() for _ in range(40)]
    n_writers, batches, per_batch = 3, 8, 40
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(k: int) -> None:
        rng = random.Random(k)
        try:
            for _ in range(batches):
                store.write_spans([span(rng.choice(traces), start=now - rng.uniform(1, 600), dur=0.25,
                                        model=f"m{rng.randint(1, 3)}", kind="llm", input_tokens=1, output_tokens=2,
                                        cost_usd=0.5, input={"t": "concurrent words"}) for _ in range(per_batch)],
                                  dump)
        except BaseException as exc:
            errors.append(exc)

    reads = [0]

    def reader() -> None:
        try:
            while not done.is_set():
                rows, _ = store.list_traces(TraceFilter(limit=20))
                store.list_traces(TraceFilter(q="concurrent", limit=5))
                if rows:
                    store.get_trace(rows[0]["trace_id"])
                store.dashboard(now - 3600, now, 60)
                reads[0] += 1
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(k,)) for k in range(n_writers)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(120)
    done.set()
    for t in readers:
        t.join(30)
    assert errors == [] and reads[0] > 0
    total = n_writers * batches * per_batch
    rows, cursor = store.list_traces(TraceFilter(limit=100))
    assert cursor is None and sum(r["span_count"] for r in rows) == total
    assert sum(r["input_tokens"] for r in rows) == total
    assert sum(r["requests"] for r in store.dashboard(now - 3600, now + 60, 3600)) == total


# ---- URLs, config, the gateway ------------------------------------------------------------


def test_parse_url() -> None:
    o = parse_url("clickhouse://u%40x:p%2Fw@ch.internal:8123/traces?ttl_days=30&async_insert=1")
    assert (o["host"], o["port"], o["secure"], o["username"], o["password"], o["database"]) == (
        "ch.internal", 8123, False, "u@x", "p/w", "traces")
    assert o["ttl_days"] == 30 and o["settings"] == {"async_insert": "1"}
    assert o["meta"] == "sqlite:///shipyard.db"  # the companion SQL store, by default
    o = parse_url("clickhouses://ch.example.com?meta=postgresql%3A%2F%2Fu%3Ap%40pg%3A5432%2Fshipyard")
    assert (o["port"], o["secure"], o["database"], o["username"], o["ttl_days"]) == (8443, True, "default",
                                                                                     "default", 90)
    assert o["meta"] == "postgresql://u:p@pg:5432/shipyard"
    for bad, msg in (("clickhouse://:8123/db", "needs a host"), ("clickhouse://h:99999/db", "bad port"),
                     ("clickhouse://h/bad-name", "database name"), ("clickhouse://h/db?ttl_days=x", "ttl_days"),
                     ("clickhouse://h/db?bad%20name=1", "setting name"),
                     ("clickhouse://h/db?meta=none", "meta must be")):
        with pytest.raises(ValueError, match=msg):
            parse_url(bad)


def test_config_accepts_clickhouse_urls_and_names_errors() -> None:
    from shipyard.config import load_config

    assert load_config({"store": "clickhouse://u:p@h:8123/db"}).store.startswith("clickhouse://")
    with pytest.raises(ConfigError, match="store: .*needs a host"):
        load_config({"store": "clickhouse:///db"})


def test_an_unreachable_server_fails_at_start_without_the_password() -> None:
    from services import free_port

    pytest.importorskip("clickhouse_connect", reason="needs the clickhouse extra: pip install -e '.[clickhouse]'")

    with pytest.raises(StoreUnavailable) as ei:
        open_store(f"clickhouse://shipyard:s3cret-pw@127.0.0.1:{free_port()}/db")
    assert "cannot connect to ClickHouse" in str(ei.value) and "s3cret-pw" not in str(ei.value)


def test_features_that_need_a_sql_store_say_so(store: ClickHouseStore) -> None:
    from shipyard.releases.store import RegistryUnavailable, ReleaseStore

    with pytest.raises(RegistryUnavailable, match="needs a SQL store"):
        ReleaseStore(store)


def test_the_gateway_records_into_clickhouse(store: ClickHouseStore, fake_openai) -> None:
    from shipyard import Gateway

    cfg = {"providers": {"p": {"type": "openai", "base_url": fake_openai.base_url, "api_key": "sk-x"}},
           "models": {"chat": {"targets": [{"provider": "p", "model": "gpt-4o-mini-2024-07-18"}]}},
           "prices": {"gpt-4o-mini-2024-07-18": {"input": 0.15, "output": 0.6}}}
    with Gateway(cfg, store=store) as gw:
        resp = gw.chat(model="chat", messages=[{"role": "user", "content": "hello clickhouse"}], user="ada")
        assert gw.engine.recorder.flush()
        rows, _ = store.list_traces(TraceFilter(user_id="ada", q="clickhouse"))
        (row,) = rows
        t = store.get_trace(row["trace_id"])
        (s,) = t["spans"]
        assert s["completion_id"] == resp.id and s["alias"] == "chat" and s["cost_usd"] > 0
        assert store.find_span_by_completion(resp.id)["trace_id"] == row["trace_id"]
        (d,) = store.dashboard(s["start_time"] - 60, s["start_time"] + 60, 60)
        assert d["requests"] == 1 and d["model"] == s["response_model"]


def test_serve_with_clickhouse_traces_and_a_companion_sql_store(db_name: str, fake_openai, tmp_path) -> None:
    """The whole server on a ClickHouse store: calls are recorded in ClickHouse and read back
    by the API; relational features (here the prompt registry) use the companion store."""
    from starlette.testclient import TestClient

    from shipyard.engine import Engine
    from shipyard.server.app import create_app

    store = ClickHouseStore(f"chdb://memory?database={db_name}&meta=sqlite:///{tmp_path}/meta.db")
    assert hasattr(store, "_write") and store.dialect.name == "sqlite"
    cfg = {"store": "none", "releases": {"admin_token": "admin-token-for-tests"},
           "providers": {"p": {"type": "openai", "base_url": fake_openai.base_url, "api_key": "sk-x"}},
           "models": {"chat": {"targets": [{"provider": "p", "model": "gpt-4o-mini-2024-07-18"}]}}}
    engine = Engine(cfg, store=store)
    with TestClient(create_app(engine)) as client:
        r = client.post("/v1/chat/completions", json={"model": "chat", "user": "ada",
                                                      "messages": [{"role": "user", "content": "hi from the api"}]})
        assert r.status_code == 200
        trace_id = r.headers["x-shipyard-trace-id"]
        assert engine.recorder.flush()
        got = client.get("/api/traces", params={"user": "ada", "q": "api"})
        assert got.status_code == 200, got.text
        listed = got.json()["data"]
        assert [t["trace_id"] for t in listed] == [trace_id]
        detail = client.get(f"/api/traces/{trace_id}").json()
        assert detail["spans"][0]["completion_id"] == r.json()["id"]
        assert client.get("/api/dashboard").json()["data"]
        assert client.get("/ready").json()["store"] is True
        created = client.post("/api/prompts", json={"name": "greet", "model": "chat", "messages": [{"role": "system",
                                                                                     "content": "Hi {{name}}"}]},
                              headers={"Authorization": "Bearer admin-token-for-tests"})
        assert created.status_code in (200, 201), created.text
        assert store._q(f"SELECT count() FROM {db_name}.spans")[0][0] >= 1  # the spans are in ClickHouse
        with store._read() as cur:  # and the prompt in the companion
            cur.execute("SELECT COUNT(*) FROM prompt_versions")
            assert cur.fetchone()[0] == 1
