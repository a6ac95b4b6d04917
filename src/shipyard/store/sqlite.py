"""SQLite store: WAL mode, numbered migrations, a trace summary row kept up to date on write."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import orjson

from ..tracing.span import Span
from .base import TraceFilter, decode_cursor, encode_cursor

MIGRATIONS: list[str] = [
    # 1: spans and traces
    """
    CREATE TABLE spans (
        span_id TEXT PRIMARY KEY,
        trace_id TEXT NOT NULL,
        parent_id TEXT,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        start_time REAL NOT NULL,
        end_time REAL,
        duration_ms REAL,
        status TEXT NOT NULL,
        error TEXT,
        alias TEXT,
        provider TEXT,
        model TEXT,
        response_model TEXT,
        user_id TEXT,
        session_id TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cached_tokens INTEGER,
        cost_usd REAL,
        ttft_ms REAL,
        completion_id TEXT,
        attributes TEXT,
        input TEXT,
        output TEXT
    );
    CREATE INDEX spans_trace ON spans(trace_id);
    CREATE INDEX spans_time ON spans(start_time);
    CREATE INDEX spans_completion ON spans(completion_id) WHERE completion_id IS NOT NULL;
    CREATE TABLE traces (
        trace_id TEXT PRIMARY KEY,
        start_time REAL NOT NULL,
        end_time REAL,
        name TEXT,
        status TEXT NOT NULL,
        span_count INTEGER NOT NULL,
        alias TEXT,
        model TEXT,
        user_id TEXT,
        session_id TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cost_usd REAL,
        duration_ms REAL
    );
    CREATE INDEX traces_time ON traces(start_time DESC, trace_id DESC);
    CREATE INDEX traces_user ON traces(user_id, start_time);
    CREATE INDEX traces_session ON traces(session_id, start_time);
    CREATE INDEX traces_alias ON traces(alias, start_time);
    CREATE INDEX traces_model ON traces(model, start_time);
    CREATE INDEX traces_status ON traces(status, start_time);
    """,
]

SPAN_COLUMNS = (
    "span_id", "trace_id", "parent_id", "kind", "name", "start_time", "end_time", "duration_ms",
    "status", "error", "alias", "provider", "model", "response_model", "user_id", "session_id",
    "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "ttft_ms", "completion_id",
    "attributes", "input", "output",
)
_INSERT_SPAN = "INSERT OR IGNORE INTO spans (%s) VALUES (%s)" % (
    ", ".join(SPAN_COLUMNS), ", ".join("?" * len(SPAN_COLUMNS)),
)
# One row per trace, merged as its spans arrive (in any order).
_UPSERT_TRACE = """
INSERT INTO traces (trace_id, start_time, end_time, name, status, span_count, alias, model,
                    user_id, session_id, input_tokens, output_tokens, cost_usd, duration_ms)
VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(trace_id) DO UPDATE SET
    start_time = MIN(traces.start_time, excluded.start_time),
    end_time = MAX(COALESCE(traces.end_time, excluded.end_time), COALESCE(excluded.end_time, traces.end_time)),
    name = CASE WHEN excluded.start_time < traces.start_time OR traces.name IS NULL
                THEN excluded.name ELSE traces.name END,
    status = CASE WHEN excluded.status = 'error' THEN 'error' ELSE traces.status END,
    span_count = traces.span_count + 1,
    alias = COALESCE(traces.alias, excluded.alias),
    model = COALESCE(traces.model, excluded.model),
    user_id = COALESCE(traces.user_id, excluded.user_id),
    session_id = COALESCE(traces.session_id, excluded.session_id),
    input_tokens = COALESCE(traces.input_tokens, 0) + COALESCE(excluded.input_tokens, 0),
    output_tokens = COALESCE(traces.output_tokens, 0) + COALESCE(excluded.output_tokens, 0),
    cost_usd = CASE WHEN excluded.cost_usd IS NULL THEN traces.cost_usd
                    ELSE COALESCE(traces.cost_usd, 0) + excluded.cost_usd END,
    duration_ms = (MAX(COALESCE(traces.end_time, excluded.end_time), COALESCE(excluded.end_time, traces.end_time))
                   - MIN(traces.start_time, excluded.start_time)) * 1000.0
"""
TRACE_COLUMNS = (
    "trace_id", "start_time", "end_time", "name", "status", "span_count", "alias", "model",
    "user_id", "session_id", "input_tokens", "output_tokens", "cost_usd", "duration_ms",
)
_JSON_COLUMNS = ("attributes", "input", "output")


def span_row(s: Span, dump: Callable[[Any], str | None]) -> tuple:
    return (
        s.span_id, s.trace_id, s.parent_id, s.kind, s.name, s.start_time, s.end_time, s.duration_ms,
        s.status, s.error, s.alias, s.provider, s.model, s.response_model, s.user_id, s.session_id,
        s.input_tokens, s.output_tokens, s.cached_tokens, s.cost_usd, s.ttft_ms, s.completion_id,
        orjson.dumps(s.attributes, default=str).decode() if s.attributes else None,
        dump(s.input), dump(s.output),
    )


def trace_row(s: Span) -> tuple:
    return (
        s.trace_id, s.start_time, s.end_time, s.name, s.status, s.alias, s.response_model or s.model,
        s.user_id, s.session_id, s.input_tokens, s.output_tokens, s.cost_usd, s.duration_ms,
    )


def _path(url: str) -> str:
    if url == ":memory:":
        return ":memory:"
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
    return path or ":memory:"


class SQLiteStore:
    """Thread-safe by a lock around one connection; the recorder's thread does the writes."""

    def __init__(self, url: str) -> None:
        self.path = _path(url)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
        self.migrate()

    def migrate(self) -> None:
        with self._lock:
            c = self._conn
            c.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
            done = {r[0] for r in c.execute("SELECT version FROM schema_migrations")}
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version in done:
                    continue
                c.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in sql.split(";"):
                        if stmt.strip():
                            c.execute(stmt)
                    c.execute("INSERT INTO schema_migrations VALUES (?, strftime('%s','now'))", (version,))
                    c.execute("COMMIT")
                except Exception:
                    c.execute("ROLLBACK")
                    raise

    def write_spans(self, spans: list[Span], dump: Callable[[Any], str | None]) -> None:
        rows = [span_row(s, dump) for s in spans]
        with self._lock:
            c = self._conn
            c.execute("BEGIN")
            try:
                before = c.total_changes
                for s, row in zip(spans, rows):
                    c.execute(_INSERT_SPAN, row)
                    if c.total_changes != before:  # a new span, not a repeat
                        c.execute(_UPSERT_TRACE, trace_row(s))
                    before = c.total_changes
                c.execute("COMMIT")
            except Exception:
                c.execute("ROLLBACK")
                raise

    def list_traces(self, f: TraceFilter) -> tuple[list[dict[str, Any]], str | None]:
        start, end = f.window()
        where = ["start_time >= ?", "start_time < ?"]
        args: list[Any] = [start, end]
        for col, val in (("alias", f.alias), ("model", f.model), ("user_id", f.user_id),
                         ("session_id", f.session_id), ("status", f.status)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if f.cursor:
            ts, tid = decode_cursor(f.cursor)
            where.append("(start_time < ? OR (start_time = ? AND trace_id < ?))")
            args += [ts, ts, tid]
        n = f.page_size()
        sql = (
            f"SELECT {', '.join(TRACE_COLUMNS)} FROM traces WHERE {' AND '.join(where)} "
            "ORDER BY start_time DESC, trace_id DESC LIMIT ?"
        )
        with self._lock:
            rows = [dict(r) for r in self._conn.execute(sql, (*args, n + 1))]
        cursor = None
        if len(rows) > n:
            rows = rows[:n]
            cursor = encode_cursor(rows[-1]["start_time"], rows[-1]["trace_id"])
        return rows, cursor

    def get_trace(self, trace_id: str) -> dict[str, Any] | None:
        with self._lock:
            t = self._conn.execute(
                f"SELECT {', '.join(TRACE_COLUMNS)} FROM traces WHERE trace_id = ?", (trace_id,)
            ).fetchone()
            if t is None:
                return None
            spans = [dict(r) for r in self._conn.execute(
                f"SELECT {', '.join(SPAN_COLUMNS)} FROM spans WHERE trace_id = ? ORDER BY start_time",
                (trace_id,),
            )]
        for s in spans:
            for col in _JSON_COLUMNS:
                if s[col] is not None:
                    s[col] = orjson.loads(s[col])
        return {**dict(t), "spans": spans}

    def find_span_by_completion(self, completion_id: str) -> dict[str, Any] | None:
        with self._lock:
            r = self._conn.execute(
                "SELECT span_id, trace_id FROM spans WHERE completion_id = ? LIMIT 1", (completion_id,)
            ).fetchone()
        return dict(r) if r else None

    def ping(self) -> bool:
        try:
            with self._lock:
                self._conn.execute("SELECT 1")
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self._lock:
            self._conn.close()
