"""PostgreSQL-only behaviour: URLs and connection errors, recovery after lost connections,
the migration lock, the recorder end to end. (Concurrent writers and readers are in the
conformance suite, for both backends.)"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Iterator

import orjson
import psycopg
import pytest

from services import drop_postgres_database, free_port, new_postgres_database
from shipyard.config import RecordingConfig, load_config
from shipyard.errors import ConfigError
from shipyard.store import StoreUnavailable, TraceFilter, open_store
from shipyard.store.postgres import MIGRATION_LOCK, PostgresStore, redact_url
from shipyard.tracing.recorder import Recorder
from shipyard.tracing.span import Span, new_span_id, new_trace_id


def dump(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v).decode()


def span(trace_id: str | None = None, *, start: float | None = None, **kw: Any) -> Span:
    start = time.time() - 60 if start is None else start
    s = Span(trace_id=trace_id or new_trace_id(), span_id=new_span_id(), name="chat", start_time=start,
             end_time=start + kw.pop("dur", 0.25))
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    url = new_postgres_database(postgres_url)
    yield url
    drop_postgres_database(url)


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    s = open_store(pg_url)
    assert isinstance(s, PostgresStore)
    yield s
    s.close()


# ---- URLs and errors ------------------------------------------------------------------


def test_both_url_schemes_open_a_postgres_store(pg_url: str) -> None:
    assert pg_url.startswith("postgresql://")
    for url in (pg_url, "postgres://" + pg_url[len("postgresql://"):]):
        s = open_store(url)
        try:
            assert isinstance(s, PostgresStore) and s.ping()
            assert ":***@" in s.url and "shipyard-test" not in s.url  # the password never shows
        finally:
            s.close()


def test_config_accepts_postgres_urls_and_names_bad_ones() -> None:
    for ok in ("postgresql://u:p@db.internal:5432/shipyard", "postgres://u@localhost/db",
               "postgresql://u:p@h/db?sslmode=require"):
        assert load_config({"store": ok}).store == ok
    for bad, why in (("postgresql://u:s3cret@h:port/db", "valid postgresql"),
                     ("postgresql:///db", "needs a host"),
                     ("mysql://u:p@h/db", "postgresql://")):
        with pytest.raises(ConfigError) as ei:
            load_config({"store": bad})
        assert "store:" in str(ei.value) and why in str(ei.value)
        assert "s3cret" not in str(ei.value)


def test_redact_url() -> None:
    assert redact_url("postgresql://u:s3cret@h:5432/db?x=1") == "postgresql://u:***@h:5432/db?x=1"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_unreachable_server_says_where_without_the_password() -> None:
    port = free_port()
    with pytest.raises(StoreUnavailable) as ei:
        PostgresStore(f"postgresql://u:s3cret@127.0.0.1:{port}/db", timeout=2)
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg and "s3cret" not in msg


def test_wrong_password_is_reported_without_it(pg_url: str) -> None:
    bad = pg_url.replace(":shipyard-test@", ":wrong-pw@")
    with pytest.raises(StoreUnavailable) as ei:
        open_store(bad)
    assert "password authentication failed" in str(ei.value)
    assert "wrong-pw" not in str(ei.value)


def test_without_psycopg_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError, match=r"shipyard\[postgres\]"):
        open_store("postgresql://u:p@127.0.0.1:1/db")


# ---- the pool ---------------------------------------------------------------------------


def test_pool_recovers_when_connections_are_lost(store: PostgresStore, pg_url: str) -> None:
    first = span()
    store.write_spans([first], dump)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert killed >= 1
    second = span()
    store.write_spans([second], dump)  # a dead pooled connection is noticed and replaced
    assert store.get_trace(first.trace_id) is not None
    assert store.get_trace(second.trace_id) is not None
    assert store.ping()


def test_a_migration_in_progress_makes_others_wait(pg_url: str) -> None:
    s = open_store(pg_url)
    s.close()
    opened: list[Any] = []
    with psycopg.connect(pg_url) as admin:  # holds the lock as a migrating process would
        admin.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        t = threading.Thread(target=lambda: opened.append(open_store(pg_url)))
        t.start()
        time.sleep(0.7)
        assert opened == []  # waiting for the lock
        admin.commit()  # releases it
        t.join(30)
    assert len(opened) == 1 and opened[0].ping()
    opened[0].close()


def test_recorder_writes_to_postgres(store: PostgresStore) -> None:
    rec = Recorder(store, RecordingConfig(batch_size=10, flush_interval_s=0.05))
    rec.start()
    tid = new_trace_id()
    spans = [span(tid, start=time.time() - 30 + i, input={"messages": [{"content": f"hello {i}"}]},
                  cost_usd=0.001, model="m") for i in range(25)]
    for s in spans:
        assert rec.record(s)
    rec.close()
    assert rec.stats()["written"] == 25 and rec.stats()["write_errors"] == 0
    t = store.get_trace(tid)
    assert t["span_count"] == 25 and t["cost_usd"] == pytest.approx(0.025)
    assert [s["input"]["messages"][0]["content"] for s in t["spans"]][:2] == ["hello 0", "hello 1"]
    assert store.list_traces(TraceFilter(q="hello"))[0][0]["trace_id"] == tid


def test_search_text_matches_sqlite_word_rules(store: PostgresStore) -> None:
    """Emails, URLs, paths and hyphenated words are split into words as the SQLite index
    splits them, so the same query finds the same traces on both backends."""
    sp = span(input={"t": "Mail ops@example.com, see https://docs.example.com/a/b_c?x=1 or /var/log/app.log; GPT-4o"})
    store.write_spans([sp], dump)
    for q in ("ops example com", "ops@example.com", "docs", "b_c", "var log", "app.log", "gpt 4o", "GPT-4o"):
        rows, _ = store.list_traces(TraceFilter(q=q))
        assert [r["trace_id"] for r in rows] == [sp.trace_id], q
