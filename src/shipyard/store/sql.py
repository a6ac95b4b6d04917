"""The trace store in SQL, written once for every SQL backend.

A backend (``sqlite.py``, ``postgres.py``) supplies a :class:`Dialect` (placeholder style,
scalar least/greatest), its connections (``_read``, ``_write``, ``_migration``), the
bulk insert of spans and its free-text index. Everything else — the trace summary upsert,
rollups, listing with filters and cursors, the dashboard, retention — lives here.

Feature modules with tables of their own (releases, evals, ...) register migration
components (``migrations.register``) and use the same three hooks: ``store._read()`` and
``store._write()`` (a DB-API cursor; ``_write`` is one transaction) and ``store.dialect.q``
to render ``?`` placeholders for the backend. Those names are kept stable for them.

Writes: one transaction per batch inserts the new spans (a repeated span id is ignored:
spans are immutable), indexes their text, upserts one summary row per trace (merged in
Python first, so each row is touched once per batch) and adds the llm spans to the
per-minute and per-hour rollups.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import orjson

from ..errors import InvalidRequest
from ..tracing.span import Span
from . import rollup, schema  # noqa: F401  (schema registers the core migrations)
from .base import TraceFilter, decode_cursor, encode_cursor
from .migrations import apply_pending

SPAN_COLUMNS = (
    "span_id", "trace_id", "parent_id", "kind", "name", "start_time", "end_time", "duration_ms",
    "status", "error", "alias", "provider", "model", "response_model", "user_id", "session_id",
    "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "ttft_ms", "completion_id",
    "attributes", "input", "output",
)
TRACE_COLUMNS = (
    "trace_id", "start_time", "end_time", "name", "status", "span_count", "alias", "model",
    "user_id", "session_id", "input_tokens", "output_tokens", "cost_usd", "duration_ms",
)
JSON_COLUMNS = ("attributes", "input", "output")
MAX_DASHBOARD_BUCKETS = 20_000  # from rollups
MAX_SPAN_BUCKETS = 2_000  # computed from spans (buckets that are not whole minutes)
PURGE_BATCH = 1000
MAX_SEARCH_TERMS = 16

_TERM = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str  # as in migration steps: "sqlite" | "postgresql"
    placeholder: str  # "?" | "%s"
    least: str  # scalar minimum of two values
    greatest: str

    def q(self, sql: str) -> str:
        """Render a query written with ``?`` placeholders and ``{least}``/``{greatest}`` (the
        shared queries hold no other ``?`` nor any ``%``)."""
        sql = sql.replace("{least}", self.least).replace("{greatest}", self.greatest)
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)


SQLITE = Dialect("sqlite", "?", "MIN", "MAX")
POSTGRESQL = Dialect("postgresql", "%s", "LEAST", "GREATEST")


def span_row(s: Span, dump: Callable[[Any], str | None]) -> tuple:
    return (
        s.span_id, s.trace_id, s.parent_id, s.kind, s.name, s.start_time, s.end_time, s.duration_ms,
        s.status, s.error, s.alias, s.provider, s.model, s.response_model, s.user_id, s.session_id,
        s.input_tokens, s.output_tokens, s.cached_tokens, s.cost_usd, s.ttft_ms, s.completion_id,
        orjson.dumps(s.attributes, default=str).decode() if s.attributes else None,
        dump(s.input), dump(s.output),
    )


# ---- trace summaries ------------------------------------------------------------------

TRACE_TYPES = ("text", "float8", "float8", "text", "text", "int4", "text", "text", "text", "text",
               "int8", "int8", "float8", "float8")
_TRACE_CONFLICT = """
ON CONFLICT (trace_id) DO UPDATE SET
    start_time = {least}(traces.start_time, excluded.start_time),
    end_time = CASE WHEN traces.end_time IS NULL THEN excluded.end_time
                    WHEN excluded.end_time IS NULL THEN traces.end_time
                    ELSE {greatest}(traces.end_time, excluded.end_time) END,
    name = CASE WHEN excluded.start_time < traces.start_time OR traces.name IS NULL
                THEN excluded.name ELSE traces.name END,
    status = CASE WHEN excluded.status = 'error' THEN 'error' ELSE traces.status END,
    span_count = traces.span_count + excluded.span_count,
    alias = COALESCE(traces.alias, excluded.alias),
    model = COALESCE(traces.model, excluded.model),
    user_id = COALESCE(traces.user_id, excluded.user_id),
    session_id = COALESCE(traces.session_id, excluded.session_id),
    input_tokens = CASE WHEN excluded.input_tokens IS NULL THEN traces.input_tokens
                        ELSE COALESCE(traces.input_tokens, 0) + excluded.input_tokens END,
    output_tokens = CASE WHEN excluded.output_tokens IS NULL THEN traces.output_tokens
                         ELSE COALESCE(traces.output_tokens, 0) + excluded.output_tokens END,
    cost_usd = CASE WHEN excluded.cost_usd IS NULL THEN traces.cost_usd
                    ELSE COALESCE(traces.cost_usd, 0) + excluded.cost_usd END,
    duration_ms = (CASE WHEN traces.end_time IS NULL THEN excluded.end_time
                        WHEN excluded.end_time IS NULL THEN traces.end_time
                        ELSE {greatest}(traces.end_time, excluded.end_time) END
                   - {least}(traces.start_time, excluded.start_time)) * 1000.0
"""


@dataclass(frozen=True, slots=True)
class Upsert:
    """``INSERT INTO table (columns) <rows> <conflict>``: the rows come from VALUES (one
    statement per row) or, where the backend does it better, from one bulk source."""

    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]  # PostgreSQL element types, for bulk sources
    conflict: str

    def values_sql(self, dialect: Dialect) -> str:
        return dialect.q(f"INSERT INTO {self.table} ({', '.join(self.columns)}) "
                         f"VALUES ({', '.join('?' * len(self.columns))}) {self.conflict}")


UPSERTS = {
    "traces": Upsert("traces", TRACE_COLUMNS, TRACE_TYPES, _TRACE_CONFLICT),
    **{t: Upsert(t, rollup.COLUMNS, rollup.TYPES, rollup.conflict_sql(t)) for t in rollup.TABLES},
}


def _add(a: Any, b: Any) -> Any:
    if b is None:
        return a
    return b if a is None else a + b


def trace_deltas(spans: Iterable[Span]) -> list[list[Any]]:
    """One summary row per trace for a batch of new spans, merged exactly as the upsert
    merges a row into the table (so the order of arrival never matters)."""
    acc: dict[str, list[Any]] = {}
    for s in spans:
        row = [s.trace_id, s.start_time, s.end_time, s.name, s.status, 1, s.alias, s.response_model or s.model,
               s.user_id, s.session_id, s.input_tokens, s.output_tokens, s.cost_usd, s.duration_ms]
        old = acc.get(s.trace_id)
        if old is None:
            acc[s.trace_id] = row
            continue
        start = min(old[1], row[1])
        end = row[2] if old[2] is None else old[2] if row[2] is None else max(old[2], row[2])
        if row[1] < old[1] or old[3] is None:
            old[3] = row[3]
        if row[4] == "error":
            old[4] = "error"
        old[5] += 1
        for i in (6, 7, 8, 9):
            if old[i] is None:
                old[i] = row[i]
        for i in (10, 11, 12):
            old[i] = _add(old[i], row[i])
        old[1], old[2] = start, end
        old[13] = None if end is None else (end - start) * 1000.0
    return [acc[k] for k in sorted(acc)]


def search_terms(q: str) -> list[str]:
    """The words of a free-text query (all must occur), lower-cased, without duplicates."""
    terms = list(dict.fromkeys(t.lower() for t in _TERM.findall(q)))
    if not terms:
        raise InvalidRequest("Invalid value for 'q': it contains no words to search for", param="q")
    if len(terms) > MAX_SEARCH_TERMS:
        raise InvalidRequest(f"Invalid value for 'q': at most {MAX_SEARCH_TERMS} different words", param="q")
    return terms


def _dicts(cur: Any) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _in(values: Sequence[Any]) -> str:
    return "(" + ", ".join("?" * len(values)) + ")"


class SQLStore:
    """The shared implementation; subclasses provide connections and dialect specifics."""

    dialect: Dialect = SQLITE
    probe_traces = 5_000  # common search terms: how many of the newest traces to check one by one

    def __init__(self) -> None:
        self._sql_upsert = {k: u.values_sql(self.dialect) for k, u in UPSERTS.items()}
        self._trace_cols = ", ".join(f"t.{c}" for c in TRACE_COLUMNS)

    # ---- backend hooks ------------------------------------------------------------
    def _read(self) -> AbstractContextManager[Any]:
        """A cursor for reads."""
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        """A cursor inside one transaction (committed on success, rolled back on error)."""
        raise NotImplementedError

    def _migration(self) -> AbstractContextManager[Any]:
        """Like ``_write``, holding the lock that serialises migrations across processes."""
        raise NotImplementedError

    def _execute_script(self, cur: Any, sql: str) -> None:
        raise NotImplementedError

    def _insert_spans(self, cur: Any, rows: list[tuple]) -> list[tuple[int, Any]]:
        """Insert span rows (``INSERT ... ON CONFLICT (span_id) DO NOTHING``: known span ids
        are ignored); returns (index into rows, backend handle) of the rows that were new."""
        raise NotImplementedError

    def _index_text(self, cur: Any, rows: list[tuple], new: list[tuple[int, Any]]) -> None:
        raise NotImplementedError

    def _upsert(self, cur: Any, key: str, rows: list[Any]) -> None:
        """Merge rows (unique keys) into a summary table (see UPSERTS)."""
        if rows:
            cur.executemany(self._sql_upsert[key], rows)

    def _clean(self, rows: list[Any]) -> list[Any]:
        """Rows as the backend can store them (PostgreSQL: no NUL characters in text)."""
        return rows

    def _unindex_text(self, cur: Any, trace_ids: list[str]) -> None:
        raise NotImplementedError

    # Free text: the backend says how to test "a span of trace t holds every term" in two
    # ways, and whether the terms are common; _search picks the way.
    def _match_in(self, terms: list[str], since: float) -> tuple[str, list[Any]]:
        """A condition on ``t`` through the search index: the matching spans that started
        since ``since`` are found first (cost grows with their number)."""
        raise NotImplementedError

    def _match_exists(self, terms: list[str]) -> tuple[str, list[Any]]:
        """A condition on ``t`` checked trace by trace (cheap per trace)."""
        raise NotImplementedError

    def _common(self, cur: Any, terms: list[str], since: float) -> bool:
        """Whether the terms match so many spans that checking the newest traces one by one
        beats collecting every match."""
        raise NotImplementedError

    def _search(self, cur: Any, where: list[str], args: list[Any], terms: list[str],
                since: float, limit: int) -> list[dict[str, Any]]:
        """Trace rows matching ``where`` that have a span whose text holds every term, newest
        first. Rare terms: through the index. Common terms: the newest PROBE_TRACES traces
        are checked one by one, and only if that does not fill the page are the older ones
        looked up through the index. Either way the cost is bounded by the time window."""
        if not self._common(cur, terms, since):
            cond, params = self._match_in(terms, since)
            return self._select_traces(cur, where + [cond], args + params, limit)
        cur.execute(self.dialect.q(
            f"SELECT t.start_time, t.trace_id FROM traces t WHERE {' AND '.join(where)} "
            "ORDER BY t.start_time DESC, t.trace_id DESC LIMIT 1 OFFSET ?"
        ), (*args, self.probe_traces - 1))
        edge = [tuple(r) for r in cur.fetchall()]
        cond, params = self._match_exists(terms)
        newest = where + (["(t.start_time, t.trace_id) >= (?, ?)"] if edge else [])
        rows = self._select_traces(cur, newest + [cond], args + list(edge[0] if edge else ()) + params, limit)
        if len(rows) >= limit or not edge:
            return rows
        cond, params = self._match_in(terms, since)
        older = where + ["(t.start_time, t.trace_id) < (?, ?)", cond]
        return rows + self._select_traces(cur, older, args + list(edge[0]) + params, limit - len(rows))

    # ---- schema -------------------------------------------------------------------
    def migrate(self) -> list[tuple[str, int]]:
        """Apply the registered migrations not yet applied; returns (component, version)s."""
        with self._migration() as cur:
            return apply_pending(cur, self.dialect, self._execute_script)

    # ---- writes -------------------------------------------------------------------
    def write_spans(self, spans: list[Span], dump: Callable[[Any], str | None]) -> None:
        """Insert spans (immutable: a repeated span id is ignored) and update trace rows,
        search index and rollups, all in one transaction."""
        seen: set[str] = set()
        batch = []
        for s in spans:
            if s.span_id not in seen:
                seen.add(s.span_id)
                batch.append(s)
        if not batch:
            return
        rows = self._clean([span_row(s, dump) for s in batch])
        with self._write() as cur:
            new = self._insert_spans(cur, rows)
            if not new:
                return
            self._index_text(cur, rows, new)
            fresh = [batch[i] for i, _ in new]
            self._upsert(cur, "traces", self._clean(trace_deltas(fresh)))
            for table, deltas in rollup.deltas(fresh).items():
                self._upsert(cur, table, self._clean(deltas))

    def purge(self, older_than: float, batch_size: int = PURGE_BATCH) -> int:
        """Delete traces that started before ``older_than`` (with all their spans and their
        search entries) and rollups of whole minutes/hours before it, in bounded batches
        (one short transaction each). Returns the number of spans deleted."""
        q = self.dialect.q
        deleted = 0
        while True:
            with self._write() as cur:
                cur.execute(q("SELECT trace_id FROM traces WHERE start_time < ? ORDER BY start_time LIMIT ?"),
                            (older_than, batch_size))
                ids = [r[0] for r in cur.fetchall()]
                if not ids:
                    break
                self._unindex_text(cur, ids)
                cur.execute(q(f"DELETE FROM spans WHERE trace_id IN {_in(ids)}"), ids)
                deleted += max(cur.rowcount, 0)
                cur.execute(q(f"DELETE FROM traces WHERE trace_id IN {_in(ids)}"), ids)
        for table, width in rollup.TABLES.items():
            cutoff = int(older_than // width) * width  # rows before this cover whole buckets
            while True:
                with self._write() as cur:
                    cur.execute(q(f"SELECT DISTINCT ts FROM {table} WHERE ts < ? ORDER BY ts LIMIT ?"),
                                (cutoff, max(1, batch_size // 20)))
                    stamps = [r[0] for r in cur.fetchall()]
                    if not stamps:
                        break
                    cur.execute(q(f"DELETE FROM {table} WHERE ts IN {_in(stamps)}"), stamps)
        return deleted

    # ---- reads --------------------------------------------------------------------
    def list_traces(self, f: TraceFilter) -> tuple[list[dict[str, Any]], str | None]:
        start, end = f.window()
        where = ["t.start_time >= ?", "t.start_time < ?"]
        args: list[Any] = [start, end]
        for col, val in (("alias", f.alias), ("model", f.model), ("user_id", f.user_id),
                         ("session_id", f.session_id), ("status", f.status)):
            if val is not None:
                where.append(f"t.{col} = ?")
                args.append(val)
        # an unknown cost or duration never satisfies a bound on it
        for cond, val in (("t.cost_usd >= ?", f.min_cost), ("t.cost_usd <= ?", f.max_cost),
                          ("t.duration_ms >= ?", f.min_latency_ms), ("t.duration_ms <= ?", f.max_latency_ms)):
            if val is not None:
                where.append(cond)
                args.append(float(val))
        if f.cursor:
            ts, tid = decode_cursor(f.cursor)
            where.append("(t.start_time, t.trace_id) < (?, ?)")
            args += [ts, tid]
        n = f.page_size()
        terms = search_terms(f.q) if f.q else None
        with self._read() as cur:
            if terms:
                rows = self._search(cur, where, args, terms, start, n + 1)
            else:
                rows = self._select_traces(cur, where, args, n + 1)
        cursor = None
        if len(rows) > n:
            rows = rows[:n]
            cursor = encode_cursor(rows[-1]["start_time"], rows[-1]["trace_id"])
        return rows, cursor

    def _select_traces(self, cur: Any, where: list[str], args: list[Any], limit: int) -> list[dict[str, Any]]:
        cur.execute(self.dialect.q(
            f"SELECT {self._trace_cols} FROM traces t WHERE {' AND '.join(where)} "
            "ORDER BY t.start_time DESC, t.trace_id DESC LIMIT ?"
        ), (*args, limit))
        return _dicts(cur)

    def get_trace(self, trace_id: str) -> dict[str, Any] | None:
        q = self.dialect.q
        with self._read() as cur:
            cur.execute(q(f"SELECT {self._trace_cols} FROM traces t WHERE t.trace_id = ?"), (trace_id,))
            found = _dicts(cur)
            if not found:
                return None
            cur.execute(q(f"SELECT {', '.join(SPAN_COLUMNS)} FROM spans WHERE trace_id = ? "
                          "ORDER BY start_time, span_id"), (trace_id,))
            spans = _dicts(cur)
        for s in spans:
            for col in JSON_COLUMNS:
                if s[col] is not None:
                    s[col] = orjson.loads(s[col])
        return {**found[0], "spans": spans}

    def find_span_by_completion(self, completion_id: str) -> dict[str, Any] | None:
        with self._read() as cur:
            cur.execute(self.dialect.q("SELECT span_id, trace_id FROM spans WHERE completion_id = ? LIMIT 1"),
                        (completion_id,))
            found = _dicts(cur)
        return found[0] if found else None

    def dashboard(self, start: float, end: float, bucket_s: int) -> list[dict[str, Any]]:
        """Per time bucket (epoch-aligned) and model: requests, errors, p50/p95 latency, cost
        and tokens of the llm spans that started in [start, end), oldest bucket first.

        Buckets of whole minutes are read from the rollups (whole hours from the hourly
        ones), the window widened to whole minutes; other bucket sizes are computed from
        the spans themselves, for at most MAX_SPAN_BUCKETS buckets."""
        if isinstance(bucket_s, bool) or not isinstance(bucket_s, int) or bucket_s <= 0:
            raise InvalidRequest("Invalid value for 'bucket_s': must be a positive whole number of seconds",
                                 param="bucket_s")
        limit = MAX_SPAN_BUCKETS if bucket_s % 60 else MAX_DASHBOARD_BUCKETS
        if (end - start) / bucket_s > limit:
            raise InvalidRequest(f"Too many buckets: at most {limit} of {bucket_s} s per dashboard query; "
                                 "use a larger 'bucket_s' or a shorter window", param="bucket_s")
        if end <= start:
            return []
        if bucket_s % 60:
            return self._dashboard_from_spans(start, end, bucket_s)
        lo = int(start // 60) * 60
        hi = -int(-end // 60) * 60
        parts: list[tuple[str, int, int]] = []
        h_lo, h_hi = -(-lo // 3600) * 3600, hi // 3600 * 3600
        if bucket_s % 3600 == 0 and h_lo < h_hi:
            parts.append(("llm_rollup_1h", h_lo, h_hi))
            if lo < h_lo:
                parts.append(("llm_rollup_1m", lo, h_lo))
            if h_hi < hi:
                parts.append(("llm_rollup_1m", h_hi, hi))
        else:
            parts.append(("llm_rollup_1m", lo, hi))
        cols = ", ".join(("ts", "model", *rollup.VALUE_COLUMNS, *rollup.HIST_COLUMNS))
        union = " UNION ALL ".join(f"SELECT {cols} FROM {t} WHERE ts >= ? AND ts < ?" for t, _, _ in parts)
        sums = ", ".join(f"SUM({c})" for c in ("requests", "errors", "cost_usd", "input_tokens", "output_tokens"))
        hist = ", ".join(f"SUM({h})" for h in rollup.HIST_COLUMNS)
        sql = self.dialect.q(
            f"SELECT (r.ts / CAST(? AS BIGINT)) * CAST(? AS BIGINT) AS bucket, r.model, {sums}, "
            f"MIN(r.min_ms), MAX(r.max_ms), {hist} FROM ({union}) r GROUP BY 1, 2 ORDER BY 1, 2"
        )
        args: list[Any] = [bucket_s, bucket_s]
        for _, a, b in parts:
            args += [a, b]
        with self._read() as cur:
            cur.execute(sql, args)
            raw = cur.fetchall()
        out = []
        for r in raw:
            p50, p95 = rollup.quantiles(r[9:], r[7], r[8])
            out.append({
                "bucket_start": int(r[0]),
                "model": r[1] or None,
                "requests": int(r[2]),
                "errors": int(r[3]),
                "p50_ms": p50,
                "p95_ms": p95,
                "cost_usd": None if r[4] is None else float(r[4]),
                "input_tokens": None if r[5] is None else int(r[5]),
                "output_tokens": None if r[6] is None else int(r[6]),
            })
        return out

    def _dashboard_from_spans(self, start: float, end: float, bucket_s: int) -> list[dict[str, Any]]:
        with self._read() as cur:
            cur.execute(self.dialect.q(
                "SELECT start_time, COALESCE(response_model, model, ''), status, duration_ms, cost_usd, "
                "input_tokens, output_tokens FROM spans "
                "WHERE start_time >= ? AND start_time < ? AND kind = 'llm'"
            ), (start, end))
            raw = cur.fetchall()
        acc: dict[tuple[int, str], rollup.Delta] = {}
        for ts, model, status, ms, cost, tin, tout in raw:
            key = (int(ts // bucket_s) * bucket_s, model)
            d = acc.get(key)
            if d is None:
                d = acc[key] = rollup.Delta()
            d.add_values(status, ms, cost, tin, tout)
        return [acc[k].summary(*k) for k in sorted(acc)]
