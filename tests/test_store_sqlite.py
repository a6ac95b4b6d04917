"""SQLiteStore on real files: migrations, immutable spans, trace summaries, listing and cursors."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipyard.errors import InvalidRequest
from shipyard.store import TraceFilter, open_store
from shipyard.store.base import encode_cursor
from shipyard.store.sqlite import SQLiteStore
from shipyard.tracing.span import Span, new_span_id, new_trace_id


def dump(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v).decode()


def span(trace_id: str | None = None, *, start: float | None = None, dur: float = 0.5, **kw: Any) -> Span:
    start = time.time() if start is None else start
    s = Span(trace_id=trace_id or new_trace_id(), span_id=kw.pop("span_id", new_span_id()),
             name=kw.pop("name", "chat test"), start_time=start, end_time=start + dur)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/traces.db"


@pytest.fixture
def store(db: str):
    s = SQLiteStore(db)
    yield s
    s.close()


def all_pages(store: SQLiteStore, **kw: Any) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        rows, cursor = store.list_traces(TraceFilter(cursor=cursor, **kw))
        pages.append([r["trace_id"] for r in rows])
        if cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not terminate"


# ---- migrations -------------------------------------------------------------------


def test_migrations_are_idempotent(db: str, tmp_path: Path) -> None:
    def applied() -> list[tuple]:
        with sqlite3.connect(tmp_path / "traces.db") as raw:
            return sorted(raw.execute("SELECT * FROM schema_migrations").fetchall())

    s1 = SQLiteStore(db)
    sp = span(alias="chat")
    s1.write_spans([sp], dump)
    s1.close()
    first = applied()
    assert first

    s2 = SQLiteStore(db)  # reopening must not fail on existing tables nor lose data
    s2.migrate()  # and neither does running them again explicitly
    assert s2.get_trace(sp.trace_id)["span_count"] == 1
    s2.close()

    assert applied() == first  # nothing applied twice
    with sqlite3.connect(tmp_path / "traces.db") as raw:
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"


def test_concurrent_first_open_does_not_fail(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes opening a new database at once: the second one applies migration 1
    between the first one's read of schema_migrations and its BEGIN IMMEDIATE. The first
    must then see the migration as done instead of re-running CREATE TABLE."""
    real_connect = sqlite3.connect
    state = {"hooked": False, "fired": False}

    def interleave(stmt: str) -> None:
        if not state["fired"] and stmt.strip().upper().startswith("BEGIN IMMEDIATE"):
            state["fired"] = True
            SQLiteStore(db).close()  # the "other process" migrates first

    def connect(*args: Any, **kw: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kw)
        if not state["hooked"]:  # only the first connection gets the interleaving
            state["hooked"] = True
            conn.set_trace_callback(interleave)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    s = SQLiteStore(db)
    monkeypatch.setattr(sqlite3, "connect", real_connect)
    assert state["fired"], "the interleaving did not happen"
    sp = span()
    s.write_spans([sp], dump)
    assert s.get_trace(sp.trace_id)["span_count"] == 1
    s.close()


def test_open_store_urls(tmp_path: Path) -> None:
    assert open_store("none") is None
    mem = open_store(":memory:")
    assert mem is not None and mem.ping()
    mem.close()
    nested = open_store(f"sqlite:///{tmp_path}/a/b/c.db")  # parent dirs are created
    assert (tmp_path / "a" / "b" / "c.db").exists()
    nested.close()


# ---- spans and summaries ----------------------------------------------------------


def test_span_round_trip(store: SQLiteStore) -> None:
    sp = span(alias="chat", provider="primary", model="gpt-4o-mini", response_model="gpt-4o-mini-2024",
              user_id="u1", session_id="s1", input_tokens=11, output_tokens=7, cost_usd=0.000123,
              input={"messages": [{"role": "user", "content": "hi"}]}, output={"id": "x"},
              attributes={"attempts": [{"provider": "primary", "outcome": "ok"}]}, completion_id="chatcmpl-1")
    store.write_spans([sp], dump)
    t = store.get_trace(sp.trace_id)
    assert t["span_count"] == 1 and t["status"] == "ok"
    assert t["model"] == "gpt-4o-mini-2024"  # the reported version wins on the summary
    assert t["alias"] == "chat" and t["user_id"] == "u1" and t["session_id"] == "s1"
    (s,) = t["spans"]
    assert s["input"] == {"messages": [{"role": "user", "content": "hi"}]}
    assert s["output"] == {"id": "x"}
    assert s["attributes"]["attempts"][0]["outcome"] == "ok"
    assert s["duration_ms"] == pytest.approx(500, abs=1)
    assert store.find_span_by_completion("chatcmpl-1") == {"span_id": sp.span_id, "trace_id": sp.trace_id}
    assert store.find_span_by_completion("chatcmpl-none") is None


def test_spans_are_immutable(store: SQLiteStore) -> None:
    first = span(span_id="a" * 16, alias="chat", input_tokens=10, output_tokens=5, cost_usd=0.5, status="ok")
    again = span(first.trace_id, span_id=first.span_id, alias="other", input_tokens=99, output_tokens=99,
                 cost_usd=9.0, status="error", error="boom")
    store.write_spans([first], dump)
    store.write_spans([again], dump)
    store.write_spans([first, again], dump)  # within one batch too
    t = store.get_trace(first.trace_id)
    assert t["span_count"] == 1
    assert len(t["spans"]) == 1
    assert t["status"] == "ok"
    assert (t["input_tokens"], t["output_tokens"], t["cost_usd"]) == (10, 5, 0.5)
    assert t["spans"][0]["alias"] == "chat"


def test_trace_summary_aggregates_out_of_order_spans(store: SQLiteStore) -> None:
    tid = new_trace_id()
    t0 = time.time() - 100
    root = span(tid, start=t0, dur=10, name="root", kind="chain")
    a = span(tid, start=t0 + 1, dur=2, alias="chat", model="m", input_tokens=10, output_tokens=3, cost_usd=0.25)
    b = span(tid, start=t0 + 4, dur=3, alias="chat", model="m", input_tokens=5, output_tokens=2, cost_usd=None,
             status="error", error="upstream failed")
    c = span(tid, start=t0 + 8, dur=1, input_tokens=1, output_tokens=1, cost_usd=0.5)
    # children first, the root last, and in separate batches
    store.write_spans([c], dump)
    store.write_spans([b, a], dump)
    store.write_spans([root], dump)
    t = store.get_trace(tid)
    assert t["span_count"] == 4
    assert t["start_time"] == pytest.approx(t0)
    assert t["end_time"] == pytest.approx(t0 + 10)
    assert t["duration_ms"] == pytest.approx(10_000, abs=1)
    assert t["name"] == "root"  # the earliest span names the trace
    assert t["status"] == "error"
    assert t["input_tokens"] == 16 and t["output_tokens"] == 6
    assert t["cost_usd"] == pytest.approx(0.75)  # unknown costs do not count as 0 nor erase known ones
    assert [s["name"] for s in t["spans"]][0] == "root"  # spans ordered by start time

    # an ok span after an error does not clear the error
    store.write_spans([span(tid, start=t0 + 9)], dump)
    assert store.get_trace(tid)["status"] == "error"


def test_status_error_from_first_span_sticks(store: SQLiteStore) -> None:
    tid = new_trace_id()
    store.write_spans([span(tid, status="error", error="x"), span(tid)], dump)
    assert store.get_trace(tid)["status"] == "error"


def test_cost_stays_null_when_all_unknown(store: SQLiteStore) -> None:
    tid = new_trace_id()
    store.write_spans([span(tid, input_tokens=3, output_tokens=4, cost_usd=None)], dump)
    store.write_spans([span(tid, input_tokens=1, output_tokens=1, cost_usd=None)], dump)
    t = store.get_trace(tid)
    assert t["cost_usd"] is None
    assert t["input_tokens"] == 4
    (row,), _ = store.list_traces(TraceFilter())
    assert row["cost_usd"] is None


def test_cost_known_after_unknown(store: SQLiteStore) -> None:
    tid = new_trace_id()
    store.write_spans([span(tid, cost_usd=None)], dump)
    store.write_spans([span(tid, cost_usd=0.125)], dump)
    assert store.get_trace(tid)["cost_usd"] == pytest.approx(0.125)


def test_tokens_unknown_stay_null_for_single_span(store: SQLiteStore) -> None:
    sp = span(kind="tool", name="search")
    store.write_spans([sp], dump)
    t = store.get_trace(sp.trace_id)
    assert t["input_tokens"] is None and t["output_tokens"] is None and t["cost_usd"] is None


def test_tokens_stay_null_when_no_span_knows_them(store: SQLiteStore) -> None:
    tid = new_trace_id()
    store.write_spans([span(tid, kind="chain", name="root"), span(tid, kind="tool", name="search")], dump)
    t = store.get_trace(tid)
    assert t["span_count"] == 2
    # unknown is NULL, never 0 -- as for one span, and as for cost
    assert t["input_tokens"] is None and t["output_tokens"] is None and t["cost_usd"] is None


def test_get_trace_unknown_is_none(store: SQLiteStore) -> None:
    assert store.get_trace("0" * 32) is None


def test_failed_batch_is_rolled_back(store: SQLiteStore) -> None:
    good = span(alias="chat")
    bad = span(alias="chat")
    bad.alias = object()  # cannot be bound: the second row fails inside the transaction

    with pytest.raises(sqlite3.Error):
        store.write_spans([good, bad], dump)
    assert store.get_trace(good.trace_id) is None  # all or nothing
    store.write_spans([good], dump)  # and the connection is usable afterwards
    assert store.get_trace(good.trace_id)["span_count"] == 1


# ---- listing ----------------------------------------------------------------------


def test_default_window_excludes_old_traces(store: SQLiteStore) -> None:
    now = time.time()
    recent = span(start=now - 3600)
    old = span(start=now - 10 * 86400)
    store.write_spans([recent, old], dump)
    rows, cursor = store.list_traces(TraceFilter())
    assert [r["trace_id"] for r in rows] == [recent.trace_id]
    assert cursor is None
    rows, _ = store.list_traces(TraceFilter(start=now - 30 * 86400))
    assert {r["trace_id"] for r in rows} == {recent.trace_id, old.trace_id}
    rows, _ = store.list_traces(TraceFilter(start=now - 30 * 86400, end=now - 86400))
    assert [r["trace_id"] for r in rows] == [old.trace_id]


def test_filters(store: SQLiteStore) -> None:
    now = time.time()
    a = span(start=now - 30, alias="chat", user_id="alice", model="m1", session_id="s1")
    b = span(start=now - 20, alias="chat", user_id="bob", model="m2", status="error", error="x")
    c = span(start=now - 10, alias="summarize", user_id="alice", model="m1")
    store.write_spans([a, b, c], dump)

    def ids(**kw: Any) -> list[str]:
        rows, _ = store.list_traces(TraceFilter(**kw))
        return [r["trace_id"] for r in rows]

    assert ids() == [c.trace_id, b.trace_id, a.trace_id]  # newest first
    assert ids(alias="chat") == [b.trace_id, a.trace_id]
    assert ids(user_id="alice") == [c.trace_id, a.trace_id]
    assert ids(status="error") == [b.trace_id]
    assert ids(status="ok", alias="chat") == [a.trace_id]
    assert ids(model="m2") == [b.trace_id]
    assert ids(session_id="s1") == [a.trace_id]
    assert ids(alias="nope") == []


def test_cursor_pagination_visits_every_trace_once(store: SQLiteStore) -> None:
    now = time.time()
    same = now - 50  # several traces share one start_time: the tie-break must still page correctly
    spans = [span(start=same) for _ in range(5)] + [span(start=now - i) for i in range(1, 5)]
    store.write_spans(spans, dump)
    pages = all_pages(store, limit=2)
    assert all(len(p) == 2 for p in pages[:-1])
    assert 1 <= len(pages[-1]) <= 2
    seen = [tid for p in pages for tid in p]
    assert sorted(seen) == sorted(s.trace_id for s in spans)
    assert len(seen) == len(set(seen))

    # the same order as one big page
    rows, cursor = store.list_traces(TraceFilter(limit=100))
    assert cursor is None
    assert [r["trace_id"] for r in rows] == seen


def test_cursor_pagination_with_filter(store: SQLiteStore) -> None:
    now = time.time()
    mine = [span(start=now - i, user_id="u") for i in range(5)]
    store.write_spans(mine + [span(start=now - i, user_id="other") for i in range(5)], dump)
    seen = [tid for p in all_pages(store, limit=2, user_id="u") for tid in p]
    assert sorted(seen) == sorted(s.trace_id for s in mine)


def test_exact_page_has_no_dangling_cursor(store: SQLiteStore) -> None:
    store.write_spans([span(start=time.time() - i) for i in range(4)], dump)
    pages = all_pages(store, limit=2)
    assert [len(p) for p in pages] == [2, 2]


def test_limit_is_clamped(store: SQLiteStore) -> None:
    store.write_spans([span(start=time.time() - i) for i in range(3)], dump)
    rows, cursor = store.list_traces(TraceFilter(limit=0))
    assert len(rows) == 1 and cursor is not None


@pytest.mark.parametrize("cursor", ["not-a-cursor!!", "Zm9v", encode_cursor(1.0, "x")[:-4] + "$$$$", "bm90fGE="])
def test_bad_cursor_is_invalid_request(store: SQLiteStore, cursor: str) -> None:
    # "Zm9v" is base64 of "foo" (no separator); "bm90fGE=" is "not|a" (no number)
    with pytest.raises(InvalidRequest) as ei:
        store.list_traces(TraceFilter(cursor=cursor))
    assert ei.value.param == "cursor"
    assert ei.value.status == 400


def test_ping_and_close(db: str) -> None:
    s = SQLiteStore(db)
    assert s.ping()
    s.close()
    assert not s.ping()


def test_page_cache_size_comes_from_the_url(tmp_path):
    import pytest as _pytest

    from shipyard.errors import ConfigError
    from shipyard.store import open_store

    default = open_store(f"sqlite:///{tmp_path}/a.db")
    big = open_store(f"sqlite:///{tmp_path}/b.db?cache_mb=192")
    try:
        sizes = [(s._wconn.execute("PRAGMA cache_size").fetchone()[0], s._rconn.execute("PRAGMA cache_size").fetchone()[0])
                 for s in (default, big)]
        assert sizes == [(-24576, -8192), (-147456, -49152)]  # KiB: 3/4 writer, 1/4 reader
        assert big.path == f"{tmp_path}/b.db"
    finally:
        default.close()
        big.close()
    for bad in ("cache_mb=0", "cache_mb=lots", "cache=5"):
        with _pytest.raises(ConfigError, match="cache"):
            open_store(f"sqlite:///{tmp_path}/c.db?{bad}")
