"""One suite for every store: SQLite on a real file, a real PostgreSQL server, and ClickHouse
run for real on chDB (ClickHouse embedded in-process, through clickhouse-connect's chDB
backend: the same client API and SQL as over HTTP).

Covers immutable spans, trace summaries, the default time window, every filter (cost, latency
and free text included), cursor pagination, the dashboard against hand-computed numbers,
retention and concurrent use on all three; migrations (idempotent, concurrent, per
component, transactional), rolled-back batches and the search strategies on the SQL stores
(``@sql_only``). Where ClickHouse differs on purpose the test says so: summary fields come
from the earliest span that has them, latency quantiles are t-digest estimates.
tests/test_store_clickhouse.py has what only ClickHouse does (engines, TTL, URLs, companion store).
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from services import drop_postgres_database, new_postgres_database
from shipyard.errors import InvalidRequest
from shipyard.store import TraceFilter, open_store
from shipyard.store import migrations, rollup
from shipyard.store.base import encode_cursor
from shipyard.tracing.span import Span, new_span_id, new_trace_id

DAY = 86400.0


def dump(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v).decode()


def span(trace_id: str | None = None, *, start: float | None = None, dur: float | None = 0.5, **kw: Any) -> Span:
    start = time.time() - 60 if start is None else start
    s = Span(trace_id=trace_id or new_trace_id(), span_id=kw.pop("span_id", new_span_id()),
             name=kw.pop("name", "chat test"), start_time=start, end_time=None if dur is None else start + dur)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


SQL_BACKENDS = ("sqlite", "postgres")
BACKENDS = (*SQL_BACKENDS, "clickhouse")
NEEDS_CHDB = "runs ClickHouse SQL on chDB: pip install -e '.[clickhouse-test]'"


def sql_only(test: Any) -> Any:
    """A test of what only the SQL stores have (migrations, transactions, their search plans)."""
    test.sql_only = True
    return test


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", SQL_BACKENDS if getattr(metafunc.function, "sql_only", False) else BACKENDS)


def connect(url: str) -> Any:
    if url.startswith("chdb:"):
        from shipyard.store.clickhouse import ClickHouseStore

        return ClickHouseStore(url)
    return open_store(url)


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of the backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/traces.db"
        return
    if backend == "clickhouse":
        pytest.importorskip("chdb", reason=NEEDS_CHDB)
        pytest.importorskip("clickhouse_connect", reason=NEEDS_CHDB)
        db = f"chdb://memory?database=t_{uuid.uuid4().hex[:12]}"
        yield db
        s = connect(db)
        s._cmd(f"DROP DATABASE IF EXISTS {s.db}")
        s.close()
        return
    server_url = request.getfixturevalue("postgres_url")
    db = new_postgres_database(server_url)
    yield db
    drop_postgres_database(db)


@pytest.fixture
def store(url: str) -> Iterator[Any]:
    s = connect(url)
    yield s
    s.close()


def ids(store: Any, **kw: Any) -> list[str]:
    rows, _ = store.list_traces(TraceFilter(limit=500, **kw))
    return [r["trace_id"] for r in rows]


def all_pages(store: Any, **kw: Any) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        rows, cursor = store.list_traces(TraceFilter(cursor=cursor, **kw))
        pages.append([r["trace_id"] for r in rows])
        if cursor is None:
            return pages
        assert len(pages) < 1000, "pagination does not terminate"


def applied(store: Any) -> list[tuple[str, int]]:
    with store._read() as cur:
        cur.execute("SELECT component, version FROM schema_migrations ORDER BY component, version")
        return [(c, int(v)) for c, v in cur.fetchall()]


def expected_versions() -> list[tuple[str, int]]:
    return sorted((c, v) for c, steps in migrations.registered() for v in range(1, len(steps) + 1))


def table_exists(store: Any, name: str) -> bool:
    with store._read() as cur:
        try:
            cur.execute(f"SELECT COUNT(*) FROM {name}")
            cur.fetchall()
            return True
        except Exception:
            return False


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Components registered by a test vanish with it."""
    monkeypatch.setattr(migrations, "_registry", dict(migrations._registry))


# ---- migrations -------------------------------------------------------------------


@sql_only
def test_migrations_are_idempotent(url: str) -> None:
    s1 = open_store(url)
    sp = span(alias="chat")
    s1.write_spans([sp], dump)
    assert applied(s1) == expected_versions()
    assert ("traces", 1) in applied(s1) and ("trace_search", 1) in applied(s1) and ("llm_rollup", 1) in applied(s1)
    s1.close()

    s2 = open_store(url)  # reopening must not fail on existing tables nor lose data
    assert s2.migrate() == []  # nothing left to apply
    assert s2.get_trace(sp.trace_id)["span_count"] == 1
    assert applied(s2) == expected_versions()
    s2.close()


@sql_only
def test_concurrent_start_applies_each_step_once(url: str) -> None:
    n = 4
    barrier = threading.Barrier(n)
    stores: list[Any] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait()
            stores.append(open_store(url))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert len(stores) == n
        assert applied(stores[0]) == expected_versions()  # each (component, version) exactly once
        sp = span()
        stores[1].write_spans([sp], dump)
        assert stores[2].get_trace(sp.trace_id)["span_count"] == 1
    finally:
        for s in stores:
            s.close()


@sql_only
def test_concurrent_start_of_processes_applies_each_step_once(url: str) -> None:
    code = ("import sys; from shipyard.store import open_store; s = open_store(sys.argv[1]); "
            "s.write_spans([], None); s.close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    s = open_store(url)
    try:
        assert applied(s) == expected_versions()
    finally:
        s.close()


@sql_only
def test_components_register_their_own_migrations(store: Any, isolated_registry: None) -> None:
    migrations.register("conformance_probe", [
        "CREATE TABLE conformance_probe (id TEXT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0)",
    ])
    assert store.migrate() == [("conformance_probe", 1)]
    assert table_exists(store, "conformance_probe")
    assert store.migrate() == []

    # a later version appends a step; a dialect mapping is picked per backend
    migrations.register("conformance_probe", [
        "CREATE TABLE conformance_probe (id TEXT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0)",
        {"sqlite": "ALTER TABLE conformance_probe ADD COLUMN note TEXT",
         "postgresql": "ALTER TABLE conformance_probe ADD COLUMN note TEXT"},
    ])
    assert store.migrate() == [("conformance_probe", 2)]
    with store._write() as cur:
        cur.execute(store.dialect.q("INSERT INTO conformance_probe (id, note) VALUES (?, ?) "
                                    "ON CONFLICT (id) DO UPDATE SET n = conformance_probe.n + 1"), ("a", "x"))
        cur.execute(store.dialect.q("INSERT INTO conformance_probe (id, note) VALUES (?, ?) "
                                    "ON CONFLICT (id) DO UPDATE SET n = conformance_probe.n + 1"), ("a", "x"))
    with store._read() as cur:
        cur.execute("SELECT id, n, note FROM conformance_probe")
        assert [tuple(r) for r in cur.fetchall()] == [("a", 1, "x")]

    with pytest.raises(ValueError, match="appended"):
        migrations.register("conformance_probe", ["CREATE TABLE something_else (id TEXT)"])


@sql_only
def test_a_failing_migration_changes_nothing(store: Any, isolated_registry: None) -> None:
    migrations.register("conformance_broken", [
        "CREATE TABLE conformance_half (id TEXT); CREATE TABLE conformance_half (id TEXT)",  # second fails
    ])
    with pytest.raises(Exception):
        store.migrate()
    assert ("conformance_broken", 1) not in applied(store)
    assert not table_exists(store, "conformance_half")  # the whole step was rolled back
    sp = span()
    store.write_spans([sp], dump)  # and the store still works
    assert store.get_trace(sp.trace_id) is not None


@sql_only
def test_a_step_without_sql_for_the_dialect_is_an_error(store: Any, isolated_registry: None) -> None:
    migrations.register("conformance_partial", [{"mysql": "CREATE TABLE x (id TEXT)"}])
    with pytest.raises(ValueError, match="no SQL for dialect"):
        store.migrate()


# ---- spans and summaries ----------------------------------------------------------


def test_span_round_trip(store: Any) -> None:
    sp = span(alias="chat", provider="primary", model="gpt-4o-mini", response_model="gpt-4o-mini-2024",
              user_id="u1", session_id="s1", input_tokens=11, output_tokens=7, cost_usd=0.000123, ttft_ms=12.5,
              input={"messages": [{"role": "user", "content": "hi ✓ ünïcode"}]}, output={"id": "x"},
              attributes={"attempts": [{"provider": "primary", "outcome": "ok"}]}, completion_id="chatcmpl-1")
    store.write_spans([sp], dump)
    t = store.get_trace(sp.trace_id)
    assert t["span_count"] == 1 and t["status"] == "ok"
    assert t["model"] == "gpt-4o-mini-2024"
    (s,) = t["spans"]
    assert s["input"] == {"messages": [{"role": "user", "content": "hi ✓ ünïcode"}]}
    assert s["output"] == {"id": "x"}
    assert s["attributes"]["attempts"][0]["outcome"] == "ok"
    assert s["duration_ms"] == pytest.approx(500, abs=1)
    assert s["start_time"] == sp.start_time  # full precision
    assert s["cost_usd"] == pytest.approx(0.000123) and s["ttft_ms"] == 12.5
    assert (s["input_tokens"], s["output_tokens"], s["cached_tokens"]) == (11, 7, None)
    assert store.find_span_by_completion("chatcmpl-1") == {"span_id": sp.span_id, "trace_id": sp.trace_id}
    assert store.find_span_by_completion("chatcmpl-none") is None


def test_spans_are_immutable(store: Any) -> None:
    first = span(span_id="a" * 16, alias="chat", input_tokens=10, output_tokens=5, cost_usd=0.5, kind="llm",
                 model="m", input={"q": "original words"})
    again = span(first.trace_id, span_id=first.span_id, alias="other", input_tokens=99, output_tokens=99,
                 cost_usd=9.0, status="error", error="boom", kind="llm", model="m", input={"q": "replacement"})
    store.write_spans([first], dump)
    store.write_spans([again], dump)
    store.write_spans([first, again], dump)  # within one batch too
    t = store.get_trace(first.trace_id)
    assert t["span_count"] == 1 and len(t["spans"]) == 1
    assert t["status"] == "ok"
    assert (t["input_tokens"], t["output_tokens"], t["cost_usd"]) == (10, 5, 0.5)
    assert t["spans"][0]["alias"] == "chat"
    assert ids(store, q="replacement") == []  # a repeat is not indexed either
    assert ids(store, q="original") == [first.trace_id]
    (row,) = store.dashboard(first.start_time - 60, first.start_time + 60, 60)
    assert row["requests"] == 1 and row["errors"] == 0  # nor counted twice in rollups


def test_trace_summary_aggregates_out_of_order_spans(store: Any) -> None:
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
    assert t["span_count"] == 4
    assert t["start_time"] == pytest.approx(t0)
    assert t["end_time"] == pytest.approx(t0 + 10)
    assert t["duration_ms"] == pytest.approx(10_000, abs=1)
    assert t["name"] == "root"
    assert t["status"] == "error"
    assert t["input_tokens"] == 16 and t["output_tokens"] == 6
    assert t["cost_usd"] == pytest.approx(0.75)
    assert [s["name"] for s in t["spans"]][0] == "root"
    store.write_spans([span(tid, start=t0 + 9)], dump)  # an ok span does not clear the error
    assert store.get_trace(tid)["status"] == "error"


def test_summary_is_the_same_in_one_batch_or_many(store: Any, backend: str) -> None:
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
    assert a["name"] == "first" and a["status"] == "error"  # the earliest span names the trace
    # SQL stores: the first value written wins; ClickHouse: the earliest span that has one
    assert a["alias"] == "a" and a["model"] == ("m1" if backend == "clickhouse" else "m2") and a["user_id"] == "u"
    assert a["duration_ms"] == pytest.approx(22_000, abs=1)


def test_cost_and_tokens_stay_null_when_unknown(store: Any) -> None:
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
    assert store.get_trace(tid)["cost_usd"] == pytest.approx(0.125)  # known after unknown


def test_many_spans_with_one_start_time(store: Any) -> None:
    """More spans in one millisecond than SQLite's time ids have low bits for."""
    t0 = time.time() - 300
    tid = new_trace_id()
    spans = [span(tid, start=t0, input={"t": f"same moment {i}"}) for i in range(5000)]
    for k in range(0, len(spans), 1000):
        store.write_spans(spans[k:k + 1000], dump)
    t = store.get_trace(tid)
    assert t["span_count"] == 5000 and len(t["spans"]) == 5000
    assert ids(store, q="moment 4999", start=t0 - 1) == [tid]
    assert ids(store, q="moment", start=t0 + 1) == []  # still bounded by the window


def test_get_trace_unknown_is_none(store: Any) -> None:
    assert store.get_trace("0" * 32) is None


@sql_only
def test_failed_batch_is_rolled_back(store: Any) -> None:
    good = span(alias="chat", input={"q": "rollback probe"})
    bad = span(alias="chat")
    bad.alias = object()  # cannot be bound: the batch fails inside its transaction
    with pytest.raises(Exception):
        store.write_spans([good, bad], dump)
    assert store.get_trace(good.trace_id) is None
    assert ids(store, q="rollback") == []
    store.write_spans([good], dump)
    assert store.get_trace(good.trace_id)["span_count"] == 1
    assert ids(store, q="rollback") == [good.trace_id]


def test_nul_characters_and_unicode_are_stored(store: Any) -> None:
    sp = span(name="odd\x00name", error="e\x00", input={"text": "zero \x00 byte, café naïve"}, status="error")
    store.write_spans([sp], dump)
    t = store.get_trace(sp.trace_id)
    assert t["spans"][0]["input"] == {"text": "zero \x00 byte, café naïve"}  # JSON keeps it escaped
    assert t["spans"][0]["name"].startswith("odd")
    assert ids(store, q="café") == [sp.trace_id]
    assert ids(store, q="NAÏVE") == [sp.trace_id]


# ---- listing ----------------------------------------------------------------------


def test_default_window_is_seven_days(store: Any) -> None:
    now = time.time()
    recent = span(start=now - 3600)
    edge = span(start=now - 6.9 * DAY)
    old = span(start=now - 7.1 * DAY)
    ancient = span(start=now - 12 * DAY)
    store.write_spans([recent, edge, old, ancient], dump)
    rows, cursor = store.list_traces(TraceFilter())
    assert [r["trace_id"] for r in rows] == [recent.trace_id, edge.trace_id]
    assert cursor is None
    assert ids(store, start=now - 30 * DAY) == [recent.trace_id, edge.trace_id, old.trace_id, ancient.trace_id]
    assert ids(store, start=now - 30 * DAY, end=now - DAY) == [edge.trace_id, old.trace_id, ancient.trace_id]
    assert ids(store, end=now - 10 * DAY) == [ancient.trace_id]  # 7 days before the given end


def test_a_trace_is_listed_by_its_start_even_with_later_spans(store: Any) -> None:
    now = time.time()
    tid = new_trace_id()
    store.write_spans([span(tid, start=now - 3 * DAY, name="root")], dump)
    store.write_spans([span(tid, start=now - 1 * DAY, name="late child", input={"t": "tardy"})], dump)
    assert ids(store, start=now - 4 * DAY, end=now - 2 * DAY) == [tid]
    assert ids(store, start=now - 2 * DAY) == []  # its start is outside this window
    assert ids(store, start=now - 4 * DAY, q="tardy") == [tid]
    (row,) = store.list_traces(TraceFilter(start=now - 4 * DAY))[0]
    assert row["span_count"] == 2 and row["name"] == "root"


def test_equality_filters(store: Any) -> None:
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


def test_cost_and_latency_filters(store: Any) -> None:
    now = time.time()
    cheap = span(start=now - 40, dur=0.1, cost_usd=0.001)
    mid = span(start=now - 30, dur=1.0, cost_usd=0.01)
    dear = span(start=now - 20, dur=5.0, cost_usd=0.5)
    unknown = span(start=now - 10, dur=None, cost_usd=None)  # no end: duration unknown too
    store.write_spans([cheap, mid, dear, unknown], dump)
    assert ids(store, min_cost=0.01) == [dear.trace_id, mid.trace_id]  # inclusive bounds
    assert ids(store, max_cost=0.01) == [mid.trace_id, cheap.trace_id]  # unknown cost is not "cheap"
    assert ids(store, min_cost=0.005, max_cost=0.1) == [mid.trace_id]
    assert ids(store, min_cost=1) == []
    assert ids(store, min_latency_ms=1000) == [dear.trace_id, mid.trace_id]
    assert ids(store, max_latency_ms=999) == [cheap.trace_id]
    assert ids(store, min_latency_ms=50, max_latency_ms=2000, min_cost=0.005) == [mid.trace_id]
    # the bounds apply to the trace, not to single spans
    tid = new_trace_id()
    store.write_spans([span(tid, start=now - 5, dur=0.2, cost_usd=0.3), span(tid, start=now - 4, dur=3, cost_usd=0.3)],
                      dump)
    assert tid in ids(store, min_cost=0.6, min_latency_ms=3500)


def test_free_text_search(store: Any) -> None:
    now = time.time()
    a = span(start=now - 50, input={"messages": [{"role": "user", "content": "Where is my Refund? Order #A-1234"}]},
             output={"choices": [{"message": {"content": "Your refund was issued on Monday."}}]})
    b = span(start=now - 40, input={"messages": [{"role": "user", "content": "What's the shipping policy for gpt-4o?"}]})
    tid = new_trace_id()  # the words sit in the second span of the trace
    c1 = span(tid, start=now - 30, kind="chain", name="agent", input={"task": "plan"})
    c2 = span(tid, start=now - 29, input={"messages": [{"content": "nested"}]},
              output={"deep": [{"x": {"y": ["the warehouse in Zürich"]}}]})
    old = span(start=now - 9 * DAY, input={"text": "refund from long ago"})
    keys_only = span(start=now - 20, input={"refundable": True, "warehouse_code": 12})
    store.write_spans([a, b, c1, c2, old, keys_only], dump)

    assert ids(store, q="refund") == [a.trace_id]  # whole words, case-insensitive, in the window only
    assert ids(store, q="REFUND issued") == [a.trace_id]  # every word must occur
    assert ids(store, q="refund shipping") == []
    assert ids(store, q="a-1234") == [a.trace_id]  # punctuation separates words, as in the text
    assert ids(store, q="1234") == [a.trace_id]
    assert ids(store, q="gpt-4o") == [b.trace_id]
    assert ids(store, q="zürich warehouse") == [tid]  # any span of the trace, any depth
    assert ids(store, q="refund", start=now - 30 * DAY) == [a.trace_id, old.trace_id]
    assert ids(store, q="refundable") == []  # keys are not text
    assert ids(store, q="refund", user_id="nobody") == []
    assert ids(store, q="monday", status="ok", min_cost=None) == [a.trace_id]
    for bad in ("?!", " ".join(f"w{i}" for i in range(17))):
        with pytest.raises(InvalidRequest) as ei:
            store.list_traces(TraceFilter(q=bad))
        assert ei.value.param == "q"


def test_cursor_pagination_visits_every_trace_once(store: Any) -> None:
    now = time.time()
    same = now - 50
    spans = [span(start=same) for _ in range(5)] + [span(start=now - i) for i in range(1, 5)]
    store.write_spans(spans, dump)
    pages = all_pages(store, limit=2)
    assert all(len(p) == 2 for p in pages[:-1]) and 1 <= len(pages[-1]) <= 2
    seen = [tid for p in pages for tid in p]
    assert sorted(seen) == sorted(s.trace_id for s in spans)
    assert len(seen) == len(set(seen))
    rows, cursor = store.list_traces(TraceFilter(limit=100))
    assert cursor is None and [r["trace_id"] for r in rows] == seen


def test_cursor_pagination_with_filters_and_search(store: Any) -> None:
    now = time.time()
    rng = random.Random(5)
    mine, others = [], []
    for i in range(60):
        start = now - 100 + (i // 3)  # ties on start_time
        if rng.random() < 0.5:
            mine.append(span(start=start, user_id="u", cost_usd=0.1, input={"t": f"needle {i}"}))
        else:
            others.append(span(start=start, user_id="v", cost_usd=0.001, input={"t": f"hay {i}"}))
    store.write_spans(mine + others, dump)
    want = sorted(s.trace_id for s in mine)
    for kw in ({"user_id": "u"}, {"min_cost": 0.05}, {"q": "needle"}, {"q": "needle", "user_id": "u"}):
        seen = [tid for p in all_pages(store, limit=7, **kw) for tid in p]
        assert sorted(seen) == want, kw
        assert len(seen) == len(set(seen))


@sql_only
@pytest.mark.parametrize("common,probe", [(False, 5000), (True, 5000), (True, 4), (True, 1)])
def test_search_strategies_agree(store: Any, monkeypatch: pytest.MonkeyPatch, common: bool, probe: int) -> None:
    """Rare words are looked up in the index; common ones are checked trace by trace over the
    newest traces, then the older ones through the index: every way gives the same pages."""
    monkeypatch.setattr(store, "_common", lambda cur, terms, since: common)
    monkeypatch.setattr(store, "probe_traces", probe)
    now = time.time()
    spans = [span(start=now - 200 + i // 2, input={"t": "needle" if i % 3 == 0 else "hay"}, user_id=f"u{i % 2}")
             for i in range(90)]
    spans.append(span(start=now - 9 * DAY, input={"t": "needle"}))  # outside the window
    store.write_spans(spans, dump)
    for kw in ({}, {"user_id": "u1"}):
        want = [s.trace_id for s in sorted(spans, key=lambda s: (s.start_time, s.trace_id), reverse=True)
                if s.input["t"] == "needle" and kw.get("user_id", s.user_id) == s.user_id
                and s.start_time > now - DAY]
        seen = [tid for p in all_pages(store, limit=4, q="needle", **kw) for tid in p]
        assert seen == want
        assert [tid for p in all_pages(store, limit=50, q="needle", **kw) for tid in p] == want


@sql_only
def test_common_words_are_told_from_rare_ones(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import shipyard.store.postgres as pg
    import shipyard.store.sqlite as lite

    monkeypatch.setattr(lite, "SPARSE_TERM_DOCS", 10)
    monkeypatch.setattr(pg, "SPARSE_MATCHES", 10)
    store.write_spans([span(input={"t": f"often {'seldom' if i == 0 else ''}"}) for i in range(20)], dump)
    with store._read() as cur:
        assert store._common(cur, ["often"], time.time() - DAY)
        assert not store._common(cur, ["seldom"], time.time() - DAY)
        assert not store._common(cur, ["often", "seldom"], time.time() - DAY)
        assert not store._common(cur, ["never"], time.time() - DAY)


def test_exact_page_has_no_dangling_cursor(store: Any) -> None:
    store.write_spans([span(start=time.time() - i - 1) for i in range(4)], dump)
    assert [len(p) for p in all_pages(store, limit=2)] == [2, 2]


def test_limit_is_clamped(store: Any) -> None:
    store.write_spans([span(start=time.time() - i - 1) for i in range(3)], dump)
    rows, cursor = store.list_traces(TraceFilter(limit=0))
    assert len(rows) == 1 and cursor is not None


@pytest.mark.parametrize("cursor", ["not-a-cursor!!", "Zm9v", encode_cursor(1.0, "x")[:-4] + "$$$$", "bm90fGE="])
def test_bad_cursor_is_invalid_request(store: Any, cursor: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        store.list_traces(TraceFilter(cursor=cursor))
    assert ei.value.param == "cursor" and ei.value.status == 400


# ---- dashboard ----------------------------------------------------------------------


def nearest_rank(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[max(0, math.ceil(q * len(v)) - 1)]


def close_enough(estimate: float, true: float) -> bool:
    """Within one histogram bucket of the true value."""
    return true / rollup.RESOLUTION <= estimate <= true * rollup.RESOLUTION


def tdigest_close(estimate: float, true: float, rel: float = 0.25) -> bool:
    """ClickHouse: a t-digest estimate, within ``rel`` of the true value."""
    return abs(estimate - true) <= rel * true


def test_dashboard_against_hand_computed_numbers(store: Any, backend: str) -> None:
    base = (int(time.time() // 3600) - 3) * 3600.0  # a whole hour, three hours ago
    llm = dict(kind="llm")
    data = [
        # minute 0, model m-a (the reported version names the model)
        span(start=base + 10, dur=0.100, model="alias-a", response_model="m-a", cost_usd=0.01,
             input_tokens=10, output_tokens=5, **llm),
        span(start=base + 20, dur=0.200, model="m-a", cost_usd=None, input_tokens=20, output_tokens=10, **llm),
        span(start=base + 30, dur=0.400, model="m-a", cost_usd=0.02, status="error", error="x", **llm),
        # minute 0, model m-b; and a tool span that is not an llm call
        span(start=base + 15, dur=0.050, model="m-b", cost_usd=None, **llm),
        span(start=base + 12, dur=9.0, kind="tool", model="m-a", cost_usd=5.0),
        # minute 1
        span(start=base + 70, dur=0.800, model="m-a", cost_usd=0.03, input_tokens=1, output_tokens=1, **llm),
        # the next hour, and outside the window
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
    assert m0["cost_usd"] == pytest.approx(0.03)  # unknown cost adds nothing, erases nothing
    if backend == "clickhouse":
        assert tdigest_close(m0["p50_ms"], 200) and 100 <= m0["p95_ms"] <= 400
    else:
        assert close_enough(m0["p50_ms"], 200) and close_enough(m0["p95_ms"], 400)
    assert m0["p95_ms"] <= 400  # never beyond the slowest call
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
    if backend == "clickhouse":  # t-digests merged across minutes
        assert 200 <= h0["p50_ms"] <= 400
    else:
        assert close_enough(h0["p50_ms"], nearest_rank([100, 200, 400, 800], 0.5))
        assert close_enough(h0["p95_ms"], 800)
    assert h0["p95_ms"] <= 800

    # a window that does not start on the hour reads the hour's edges from minute rollups
    edge = store.dashboard(base + 60, base + 2 * 3600, 3600)
    assert [(r["bucket_start"] - base, r["model"], r["requests"]) for r in edge] == [(0, "m-a", 1), (3600, "m-a", 1)]
    # buckets that are not whole minutes are computed from the spans
    raw = store.dashboard(base, base + 120, 30)
    assert [(r["bucket_start"] - base, r["model"], r["requests"], r["errors"]) for r in raw] == [
        (0, "m-a", 2, 0), (0, "m-b", 1, 0), (30, "m-a", 1, 1), (60, "m-a", 1, 0)]
    assert store.dashboard(base + 7200, base, 60) == []


def test_dashboard_percentiles_of_many_calls(store: Any, backend: str) -> None:
    rng = random.Random(11)
    base = (int(time.time() // 3600) - 2) * 3600.0
    durations = [rng.lognormvariate(6, 1.0) for _ in range(2000)]  # ms, median ~400
    spans = [span(start=base + 60 + (i % 600) / 10, dur=d / 1000, model="m", **{"kind": "llm"})
             for i, d in enumerate(durations)]
    for k in range(0, len(spans), 500):
        store.write_spans(spans[k:k + 500], dump)
    (row,) = store.dashboard(base, base + 3600, 3600)
    assert row["requests"] == 2000
    close = (lambda e, t: tdigest_close(e, t, 0.05)) if backend == "clickhouse" else close_enough
    assert close(row["p50_ms"], nearest_rank(durations, 0.5))
    assert close(row["p95_ms"], nearest_rank(durations, 0.95))
    raw = store.dashboard(base, base + 3600, 45)  # from the spans
    assert sum(r["requests"] for r in raw) == 2000 and len(raw) == 2


def test_dashboard_rejects_bad_buckets(store: Any) -> None:
    now = time.time()
    for bad in (0, -60, 1.5, True):
        with pytest.raises(InvalidRequest) as ei:
            store.dashboard(now - 3600, now, bad)
        assert ei.value.param == "bucket_s"
    with pytest.raises(InvalidRequest):
        store.dashboard(now - 365 * DAY, now, 60)  # far too many buckets


# ---- retention ------------------------------------------------------------------------


def test_purge_deletes_old_traces_spans_search_and_rollups(store: Any, backend: str) -> None:
    now = time.time()
    cutoff = (now - 30 * DAY) // 3600 * 3600  # on the hour: rollups are purged by whole buckets
    old = []
    for i in range(25):
        tid = new_trace_id()
        old += [span(tid, start=cutoff - DAY - i * 60, model="m", input={"t": "ancient words"}, cost_usd=0.1),
                span(tid, start=cutoff - DAY - i * 60 + 1, kind="tool", output={"t": "ancient tool"})]
    straddling = new_trace_id()  # started before the cutoff, a span after it: goes whole
    old += [span(straddling, start=cutoff - 5, model="m", input={"t": "ancient"}),
            span(straddling, start=cutoff + 5, model="m", input={"t": "ancient"})]
    recent = [span(start=now - 100, model="m", input={"t": "ancient words"}),
              span(start=cutoff + 3600, model="m", input={"t": "ancient words"})]
    store.write_spans(old + recent, dump)
    wide = dict(start=now - 60 * DAY)
    assert len(ids(store, q="ancient", **wide)) == 28

    deleted = store.purge(cutoff, **({} if backend == "clickhouse" else {"batch_size": 7}))
    assert deleted == len(old)
    assert sorted(ids(store, **wide)) == sorted(s.trace_id for s in recent)
    assert sorted(ids(store, q="ancient", **wide)) == sorted(s.trace_id for s in recent)
    assert store.get_trace(straddling) is None
    dash = store.dashboard(cutoff - 10 * DAY, now + 60, 86400)
    # rollups are aggregates by time: calls before the cutoff are gone, the late span of the
    # straddling trace still counts for the minute it ran in
    assert sum(r["requests"] for r in dash) == 2 + 1
    assert store.purge(cutoff) == 0  # nothing left to do

    if backend == "sqlite":  # the contentless index was told exactly what to forget
        store._fts.integrity_check()
    # new writes after a purge are indexed as before
    later = span(start=now - 10, input={"t": "fresh ancient"})
    store.write_spans([later], dump)
    assert later.trace_id in ids(store, q="fresh")


# ---- concurrency --------------------------------------------------------------------


def test_concurrent_writers_and_readers(store: Any) -> None:
    """Writers share traces (so they upsert the same summary and rollup rows) while readers
    list, search, open traces and read the dashboard; nothing is lost or counted twice."""
    now = time.time()
    traces = [new_trace_id() for _ in range(40)]
    n_writers, batches, per_batch = 4, 15, 40
    written: list[list[Span]] = [[] for _ in range(n_writers)]
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(k: int) -> None:
        rng = random.Random(k)
        try:
            for _ in range(batches):
                batch = [span(rng.choice(traces), start=now - rng.uniform(1, 600), dur=0.25,
                              model=f"m{rng.randint(1, 3)}", input_tokens=1, output_tokens=2, cost_usd=0.5,
                              input={"t": "concurrent words"})
                         for _ in range(per_batch)]
                store.write_spans(batch, dump)
                written[k] += batch
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
    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(120)
    done.set()
    for t in readers:
        t.join(30)
    assert errors == []
    assert reads[0] > 0

    total = n_writers * batches * per_batch
    rows, cursor = store.list_traces(TraceFilter(limit=100))
    assert cursor is None
    assert sum(r["span_count"] for r in rows) == total
    assert sum(r["input_tokens"] for r in rows) == total
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(0.5 * total)
    per_trace: dict[str, int] = {}
    for s in (s for w in written for s in w):
        per_trace[s.trace_id] = per_trace.get(s.trace_id, 0) + 1
    assert {r["trace_id"]: r["span_count"] for r in rows} == per_trace
    dash = store.dashboard(now - 3600, now + 60, 3600)
    assert sum(r["requests"] for r in dash) == total
    assert sum(r["output_tokens"] for r in dash) == 2 * total
    assert len(store.list_traces(TraceFilter(q="concurrent", limit=500))[0]) == len(per_trace)



# ---- lifecycle ----------------------------------------------------------------------


@sql_only
def test_ping_and_close(url: str) -> None:
    s = open_store(url)
    assert s.ping()
    s.close()
    assert not s.ping()


# ---- upgrading a database written by shipyard 0.1 ------------------------------------

V0_SCHEMA = """
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL);
INSERT INTO schema_migrations VALUES (1, 1700000000);
CREATE TABLE spans (span_id TEXT PRIMARY KEY, trace_id TEXT NOT NULL, parent_id TEXT, kind TEXT NOT NULL,
    name TEXT NOT NULL, start_time REAL NOT NULL, end_time REAL, duration_ms REAL, status TEXT NOT NULL,
    error TEXT, alias TEXT, provider TEXT, model TEXT, response_model TEXT, user_id TEXT, session_id TEXT,
    input_tokens INTEGER, output_tokens INTEGER, cached_tokens INTEGER, cost_usd REAL, ttft_ms REAL,
    completion_id TEXT, attributes TEXT, input TEXT, output TEXT);
CREATE INDEX spans_trace ON spans(trace_id);
CREATE INDEX spans_time ON spans(start_time);
CREATE INDEX spans_completion ON spans(completion_id) WHERE completion_id IS NOT NULL;
CREATE TABLE traces (trace_id TEXT PRIMARY KEY, start_time REAL NOT NULL, end_time REAL, name TEXT,
    status TEXT NOT NULL, span_count INTEGER NOT NULL, alias TEXT, model TEXT, user_id TEXT, session_id TEXT,
    input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, duration_ms REAL);
CREATE INDEX traces_time ON traces(start_time DESC, trace_id DESC);
CREATE INDEX traces_user ON traces(user_id, start_time);
CREATE INDEX traces_session ON traces(session_id, start_time);
CREATE INDEX traces_alias ON traces(alias, start_time);
CREATE INDEX traces_model ON traces(model, start_time);
CREATE INDEX traces_status ON traces(status, start_time);
"""


def test_sqlite_database_from_0_1_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    base = (int(time.time() // 3600) - 1) * 3600.0
    with sqlite3.connect(path) as raw:
        raw.executescript(V0_SCHEMA)
        for i, (ms, status) in enumerate(((120.0, "ok"), (480.0, "error"))):
            raw.execute(
                "INSERT INTO spans (span_id, trace_id, kind, name, start_time, end_time, duration_ms, status, "
                "model, response_model, input_tokens, output_tokens, cost_usd, input, output) "
                "VALUES (?, ?, 'llm', 'chat', ?, ?, ?, ?, 'm', 'm-v', 3, 4, 0.5, ?, ?)",
                (f"s{i}", f"t{i}", base + 10 + i, base + 10 + i + ms / 1000, ms, status,
                 orjson.dumps({"messages": [{"content": f"legacy question {i}"}]}).decode(),
                 orjson.dumps({"choices": [{"message": {"content": "legacy answer"}}]}).decode()))
            raw.execute("INSERT INTO traces (trace_id, start_time, end_time, name, status, span_count, model, "
                        "input_tokens, output_tokens, cost_usd, duration_ms) VALUES (?, ?, ?, 'chat', ?, 1, 'm-v', "
                        "3, 4, 0.5, ?)", (f"t{i}", base + 10 + i, base + 10 + i + ms / 1000, status, ms))
    store = open_store(f"sqlite:///{path}")
    try:
        assert applied(store) == expected_versions()
        with store._read() as cur:
            cur.execute("SELECT applied_at FROM schema_migrations WHERE component = 'traces' AND version = 1")
            assert cur.fetchone()[0] == 1700000000  # history kept
        assert ids(store, q="legacy answer") == ["t1", "t0"]  # the search index was backfilled
        assert ids(store, q="question 1") == ["t1"]
        (row,) = store.dashboard(base, base + 3600, 3600)  # and the rollups
        assert (row["model"], row["requests"], row["errors"], row["cost_usd"], row["input_tokens"]) == (
            "m-v", 2, 1, 1.0, 6)
        assert close_enough(row["p95_ms"], 480) and row["p95_ms"] <= 480
        (minute,) = store.dashboard(base, base + 3600, 60)
        assert minute["requests"] == 2
        store.purge(base + 3600)  # a backfilled row is un-indexed like any other
        store._fts.integrity_check()
        assert ids(store, q="legacy") == []
    finally:
        store.close()
