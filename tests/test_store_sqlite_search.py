"""The SQLite store's search index in a file of its own (store/sqlite_search.py): rebuilt when
missing, repaired after failed writes, shared safely by several stores on one database, and
searchable right after a write in the process that wrote."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipyard.store import TraceFilter
from shipyard.store import sqlite_search
from shipyard.store.sqlite import SQLiteStore
from shipyard.tracing.span import Span, new_span_id, new_trace_id


def dump(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v).decode()


def span(text: str, *, start: float | None = None, **kw: Any) -> Span:
    start = time.time() - 60 if start is None else start
    s = Span(trace_id=kw.pop("trace_id", new_trace_id()), span_id=new_span_id(), name="chat",
             start_time=start, end_time=start + 0.5)
    s.input = {"messages": [{"role": "user", "content": text}]}
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def ids(store: SQLiteStore, q: str, **kw: Any) -> set[str]:
    """Every matching trace, page after page."""
    out: set[str] = set()
    cursor = None
    while True:
        rows, cursor = store.list_traces(TraceFilter(q=q, limit=500, cursor=cursor, **kw))
        out |= {r["trace_id"] for r in rows}
        if cursor is None:
            return out


def index_state(store: SQLiteStore) -> tuple[list[int], int]:
    """(spans not indexed, index documents without a span), after the index caught up."""
    assert store.wait_for_search_index(60)
    conn = sqlite3.connect(store.path)
    try:
        return store._fts.missing(conn)
    finally:
        conn.close()


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "traces.db")


def test_the_index_lives_beside_the_database_and_a_write_is_found_at_once(path: str) -> None:
    store = SQLiteStore(f"sqlite:///{path}")
    try:
        for i in range(20):  # each write is searchable as soon as it returns, in this process
            sp = span(f"parcel number{i} arrived")
            store.write_spans([sp], dump)
            assert ids(store, f"number{i}") == {sp.trace_id}
        assert Path(path + "-search").exists()
        with sqlite3.connect(path) as raw:  # nothing of the index in the database itself
            names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
        assert not {n for n in names if n.startswith("spans_fts")}
        assert index_state(store) == ([], 0)
    finally:
        store.close()


def test_a_deleted_index_is_rebuilt_from_the_spans(path: str) -> None:
    store = SQLiteStore(f"sqlite:///{path}")
    spans = [span(f"invoice {i} overdue", output={"text": "Straße İstanbul"}) for i in range(1200)]
    store.write_spans(spans, dump)
    store.close()
    for suffix in ("-search", "-search-wal", "-search-shm"):
        Path(path + suffix).unlink(missing_ok=True)

    store = SQLiteStore(f"sqlite:///{path}")
    try:
        assert ids(store, "overdue") == {s.trace_id for s in spans}  # the first search waits for it
        assert ids(store, "invoice 777") == {spans[777].trace_id}
        assert len(ids(store, "straße")) == 1200
        assert len(ids(store, "İSTANBUL")) == 1200  # lower-cased the same way as the text
        assert index_state(store) == ([], 0)
        store._fts.integrity_check()
    finally:
        store.close()


def test_a_database_with_the_index_inside_moves_it_out(path: str) -> None:
    # the layout before this one: FTS5 tables in the database file itself
    store = SQLiteStore(f"sqlite:///{path}")
    spans = [span(f"legacy ticket {i}") for i in range(30)]
    store.write_spans(spans, dump)
    store.close()
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE VIRTUAL TABLE spans_fts USING fts5(body, content='', detail=none)")
        raw.execute("CREATE VIRTUAL TABLE spans_fts_vocab USING fts5vocab(spans_fts, 'row')")
        raw.execute("INSERT INTO spans_fts(rowid, body) SELECT rowid, 'legacy' FROM spans")
        raw.execute("DELETE FROM schema_migrations WHERE component = 'trace_search' AND version = 3")
    for suffix in ("-search", "-search-wal", "-search-shm"):
        Path(path + suffix).unlink(missing_ok=True)

    store = SQLiteStore(f"sqlite:///{path}")
    try:
        with sqlite3.connect(path) as raw:
            names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
        assert "spans_fts" not in names
        assert ids(store, "ticket 7") == {spans[7].trace_id}
        assert len(ids(store, "legacy")) == 30
    finally:
        store.close()


def test_spans_whose_indexing_failed_are_indexed_when_it_works_again(
        path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteStore(f"sqlite:///{path}")
    try:
        real = sqlite_search.SearchIndex._transaction
        failures = []

        def flaky(self: Any, kind: str, docs: list) -> None:
            if kind == "add" and len(failures) < 2:
                failures.append(len(docs))
                raise sqlite3.OperationalError("disk I/O error")
            real(self, kind, docs)

        monkeypatch.setattr(sqlite_search.SearchIndex, "_transaction", flaky)
        monkeypatch.setattr(sqlite_search, "RETRY_MAX_S", 0.2)
        first = [span("fragile alpha") for _ in range(3)]
        store.write_spans(first, dump)  # its indexing fails: the spans stay stored
        assert store.get_trace(first[0].trace_id) is not None
        later = span("fragile beta")
        store.write_spans([later], dump)
        assert ids(store, "fragile") == {s.trace_id for s in first} | {later.trace_id}
        assert failures and index_state(store) == ([], 0)
        assert "search index: writing failed" in caplog.text
        store._fts.integrity_check()
    finally:
        store.close()


def test_a_purge_that_rolls_back_leaves_its_spans_searchable(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(f"sqlite:///{path}")
    try:
        old = [span("ancient scroll", start=time.time() - 40 * 86400) for _ in range(5)]
        store.write_spans(old, dump)
        real = store._unindex_text

        def unindex_then_fail(cur: Any, trace_ids: list[str]) -> None:
            real(cur, trace_ids)  # the documents leave the index, then the purge fails
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store, "_unindex_text", unindex_then_fail)
        with pytest.raises(sqlite3.OperationalError):
            store.purge(time.time() - 30 * 86400)
        monkeypatch.undo()
        assert ids(store, "ancient scroll", start=time.time() - 60 * 86400) == {s.trace_id for s in old}
        assert index_state(store) == ([], 0)
        assert store.purge(time.time() - 30 * 86400) == 5  # and a purge that works forgets them
        assert index_state(store) == ([], 0)
        store._fts.integrity_check()
    finally:
        store.close()


def test_several_stores_on_one_database_index_every_span_once(path: str) -> None:
    stores = [SQLiteStore(f"sqlite:///{path}") for _ in range(2)]
    written: list[list[Span]] = [[], []]

    def writer(k: int) -> None:
        for i in range(40):
            batch = [span(f"shared word{k} item{i}") for _ in range(25)]
            stores[k].write_spans(batch, dump)
            written[k] += batch

    try:
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        third = SQLiteStore(f"sqlite:///{path}")  # opens mid-way: its repair races the writers
        for t in threads:
            t.join()
        for s in stores:
            assert s.wait_for_search_index(60)
        assert index_state(third) == ([], 0)  # every span indexed, none twice
        third._fts.integrity_check()
        for k in range(2):
            assert len(ids(third, f"word{k} item7")) == 25
        assert len(ids(stores[0], "shared", start=time.time() - 3600)) == 2000
        third.close()
    finally:
        for s in stores:
            s.close()


def test_memory_store_indexes_in_its_own_transaction() -> None:
    store = SQLiteStore(":memory:")
    try:
        sp = span("ephemeral words")
        store.write_spans([sp], dump)
        assert ids(store, "ephemeral") == {sp.trace_id}
        assert store.purge(time.time() + 10) == 1
        assert ids(store, "ephemeral") == set()
        store._fts.integrity_check()
    finally:
        store.close()


def test_queries_are_normalised_like_the_text() -> None:
    assert sqlite_search.fts_query(["Straße", "İstanbul", "x"]) == '"straße" "i" "stanbul" "x"'
    assert sqlite_search.span_docs([(1, '{"a": "Hello, World!"}', None), (2, None, None)]) == [
        (1, "hello  world "), (2, "")]
