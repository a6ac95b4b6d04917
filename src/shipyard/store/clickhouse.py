"""ClickHouse store: trace volume (docs/operations.md#clickhouse).

Selected by ``store: clickhouse://user:pass@host:8123/db`` (HTTP; ``clickhouses://`` for
HTTPS, default port 8443). Query parameters: ``ttl_days`` (retention, default 90; 0 keeps
everything), ``meta`` (the companion SQL store, default ``sqlite:///shipyard.db``) and any
ClickHouse setting (``?async_insert=1``), passed with every query.
Needs the ``clickhouse`` extra: ``pip install 'shipyard[clickhouse]'`` (clickhouse-connect).
The tests run the same SQL on chDB, ClickHouse embedded in-process (``chdb://`` URLs, the
``clickhouse-connect`` chDB backend; not selectable in config).

Tables (in the URL's database, created on first start):

- ``spans``: MergeTree, ``ORDER BY (start_time, trace_id)``, monthly partitions, TTL. Spans
  are insert-only; a batch skips span ids already stored (looked up in the batch's time
  range, a bloom-filter index on ``span_id``). Free-text search: ``words`` holds the span's
  words (as SQLite's tokenizer splits them), with a bloom-filter index for ``hasAll``.
- ``trace_summaries``: AggregatingMergeTree fed by a materialized view: one partial row per
  (day, trace) and insert, merged in the background and at query time (``GROUP BY``), so
  writers on many replicas never read-modify-write. ``alias``/``model``/``user_id``/
  ``session_id`` are those of the trace's earliest span that has one.
- ``llm_rollup_1m``: AggregatingMergeTree fed by a materialized view over llm spans: per
  minute and model, counts, sums, min/max and a ``quantilesTDigest(0.5, 0.95)`` state.
  Dashboards of whole minutes read it (merging t-digests across minutes); other bucket
  sizes are computed from ``spans``.

Only the trace store lives here. Features that keep relational state in the store (prompt
registry, feedback and review queue, virtual keys, datasets) use a companion SQL store
(``meta``), whose ``dialect``/``_read``/``_write`` this store exposes; their queries that read
spans through SQL see the companion's (empty) spans table, not ClickHouse's.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from ..errors import InvalidRequest
from ..tracing.span import Span
from .base import StoreUnavailable, TraceFilter, decode_cursor, encode_cursor
from .search import search_words
from .sql import (
    JSON_COLUMNS,
    MAX_DASHBOARD_BUCKETS,
    MAX_SPAN_BUCKETS,
    SPAN_COLUMNS,
    search_terms,
)

DEFAULT_TTL_DAYS = 90
DEFAULT_META = "sqlite:///shipyard.db"  # the companion SQL store for relational features
_RELATIONAL = frozenset({"dialect", "_read", "_write", "_migration", "_execute_script"})
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# the UTC day of an epoch-seconds expression (partitions, TTL, summary keys)
_DAY = "toDate(toDateTime(toUInt32(greatest(least({x}, 4294967295), 0)), 'UTC'))"
INSERT_COLUMNS = (*SPAN_COLUMNS, "words")


def day_sql(x: str) -> str:
    return _DAY.format(x=x)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def parse_url(url: str) -> dict[str, Any]:
    """``clickhouse[s]://user:pass@host:port/db?ttl_days=N&setting=value`` → options; raises
    ValueError naming what is wrong (config validation shows it under ``store``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("clickhouse", "clickhouses"):
        raise ValueError("must be a clickhouse://user:pass@host:8123/db or clickhouses://... URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("must be a valid clickhouse://user:pass@host:port/db URL (bad port)") from None
    if not parts.hostname:
        raise ValueError("a clickhouse:// URL needs a host: clickhouse://user:pass@host:8123/db")
    database = unquote(parts.path.lstrip("/")) or "default"
    if not _IDENT.match(database):
        raise ValueError(f"database name {database!r} must be letters, digits and underscores")
    secure = parts.scheme == "clickhouses"
    opts: dict[str, Any] = {
        "host": parts.hostname, "port": port or (8443 if secure else 8123), "secure": secure,
        "username": unquote(parts.username) if parts.username else "default",
        "password": unquote(parts.password) if parts.password else "",
        "database": database, "ttl_days": DEFAULT_TTL_DAYS, "settings": {}, "meta": DEFAULT_META,
    }
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k == "meta":
            if not v.startswith(("sqlite://", "postgresql://", "postgres://")) and v != ":memory:":
                raise ValueError("meta must be a sqlite:///path or postgresql://... URL (URL-encoded): the SQL "
                                 "store for keys, prompts, feedback and datasets")
            opts["meta"] = v
        elif k == "ttl_days":
            if not v.isdigit():
                raise ValueError("ttl_days must be a whole number of days (0: keep everything)")
            opts["ttl_days"] = int(v)
        elif _IDENT.match(k):
            opts["settings"][k] = v
        else:
            raise ValueError(f"{k!r} is not a ClickHouse setting name")
    return opts


def _schema(db: str, ttl_days: int) -> list[str]:
    def ttl(col: str) -> str:
        return f"TTL {col} + INTERVAL {ttl_days} DAY" if ttl_days else ""

    null_str = "Nullable(String)"
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""
        CREATE TABLE IF NOT EXISTS {db}.spans (
            span_id String,
            trace_id String,
            parent_id {null_str},
            kind LowCardinality(String),
            name String,
            start_time Float64,
            end_time Nullable(Float64),
            duration_ms Nullable(Float64),
            status LowCardinality(String),
            error {null_str},
            alias LowCardinality({null_str}),
            provider LowCardinality({null_str}),
            model LowCardinality({null_str}),
            response_model LowCardinality({null_str}),
            user_id {null_str},
            session_id {null_str},
            input_tokens Nullable(Int64),
            output_tokens Nullable(Int64),
            cached_tokens Nullable(Int64),
            cost_usd Nullable(Float64),
            ttft_ms Nullable(Float64),
            completion_id {null_str},
            attributes {null_str} CODEC(ZSTD(3)),
            input {null_str} CODEC(ZSTD(3)),
            output {null_str} CODEC(ZSTD(3)),
            words Array(String) CODEC(ZSTD(3)),
            day Date MATERIALIZED {day_sql('start_time')},
            INDEX span_id_bf span_id TYPE bloom_filter(0.01) GRANULARITY 4,
            INDEX completion_bf completion_id TYPE bloom_filter(0.01) GRANULARITY 4,
            INDEX words_bf words TYPE bloom_filter(0.01) GRANULARITY 2
        ) ENGINE = MergeTree
        PARTITION BY toYYYYMM(day)
        ORDER BY (start_time, trace_id)
        {ttl('day')}
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.trace_summaries (
            day Date,
            trace_id String,
            first_start SimpleAggregateFunction(min, Float64),
            last_start SimpleAggregateFunction(max, Float64),
            last_end SimpleAggregateFunction(max, Nullable(Float64)),
            first_name AggregateFunction(argMin, String, Float64),
            error_spans SimpleAggregateFunction(sum, UInt64),
            spans SimpleAggregateFunction(sum, UInt64),
            first_alias AggregateFunction(argMin, {null_str}, Float64),
            first_model AggregateFunction(argMin, {null_str}, Float64),
            first_user AggregateFunction(argMin, {null_str}, Float64),
            first_session AggregateFunction(argMin, {null_str}, Float64),
            sum_input SimpleAggregateFunction(sum, Nullable(Int64)),
            sum_output SimpleAggregateFunction(sum, Nullable(Int64)),
            sum_cost SimpleAggregateFunction(sum, Nullable(Float64))
        ) ENGINE = AggregatingMergeTree
        PARTITION BY toYYYYMM(day)
        ORDER BY (day, trace_id)
        {ttl('day')}
        """,
        f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trace_summaries_mv TO {db}.trace_summaries AS
        SELECT day, trace_id,
               min(start_time) AS first_start, max(start_time) AS last_start, max(end_time) AS last_end,
               argMinState(name, start_time) AS first_name,
               toUInt64(countIf(status = 'error')) AS error_spans, toUInt64(count()) AS spans,
               argMinState(alias, start_time) AS first_alias,
               argMinState(coalesce(response_model, model), start_time) AS first_model,
               argMinState(user_id, start_time) AS first_user,
               argMinState(session_id, start_time) AS first_session,
               sum(input_tokens) AS sum_input, sum(output_tokens) AS sum_output, sum(cost_usd) AS sum_cost
        FROM {db}.spans GROUP BY day, trace_id
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.llm_rollup_1m (
            ts Int64,
            model LowCardinality(String),
            requests SimpleAggregateFunction(sum, UInt64),
            errors SimpleAggregateFunction(sum, UInt64),
            cost SimpleAggregateFunction(sum, Nullable(Float64)),
            tokens_in SimpleAggregateFunction(sum, Nullable(Int64)),
            tokens_out SimpleAggregateFunction(sum, Nullable(Int64)),
            min_latency SimpleAggregateFunction(min, Nullable(Float64)),
            max_latency SimpleAggregateFunction(max, Nullable(Float64)),
            latency AggregateFunction(quantilesTDigest(0.5, 0.95), Nullable(Float64))
        ) ENGINE = AggregatingMergeTree
        PARTITION BY toYYYYMM({day_sql('ts')})
        ORDER BY (ts, model)
        {ttl(day_sql('ts'))}
        """,
        f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.llm_rollup_1m_mv TO {db}.llm_rollup_1m AS
        SELECT intDiv(toInt64(floor(start_time)), 60) * 60 AS ts,
               coalesce(response_model, model, '') AS model,
               toUInt64(count()) AS requests, toUInt64(countIf(status = 'error')) AS errors,
               sum(cost_usd) AS cost, sum(input_tokens) AS tokens_in, sum(output_tokens) AS tokens_out,
               min(duration_ms) AS min_latency, max(duration_ms) AS max_latency,
               quantilesTDigestState(0.5, 0.95)(duration_ms) AS latency
        FROM {db}.spans WHERE kind = 'llm' GROUP BY ts, model
        """,
    ]


_TTL_RE = re.compile(r"\bTTL\b.*?(?:toIntervalDay\((\d+)\)|INTERVAL (\d+) DAY)", re.DOTALL)
_TTL_TABLES = {"spans": "day", "trace_summaries": "day", "llm_rollup_1m": day_sql("ts")}

# the merged trace summary, in TRACE_COLUMNS order (sql.py)
_SUMMARY = """
    trace_id, min(first_start) AS t_start, max(last_end) AS t_end, argMinMerge(first_name) AS t_name,
    if(sum(error_spans) > 0, 'error', 'ok') AS t_status, sum(spans) AS t_spans,
    argMinMerge(first_alias) AS t_alias, argMinMerge(first_model) AS t_model,
    argMinMerge(first_user) AS t_user, argMinMerge(first_session) AS t_session,
    sum(sum_input) AS t_in, sum(sum_output) AS t_out, sum(sum_cost) AS t_cost,
    if(t_end IS NULL, NULL, (t_end - t_start) * 1000.0) AS t_duration, max(last_start) AS t_last_start
"""
_SUMMARY_KEYS = ("trace_id", "start_time", "end_time", "name", "status", "span_count", "alias", "model",
                 "user_id", "session_id", "input_tokens", "output_tokens", "cost_usd", "duration_ms")


def _trace_row(r: tuple) -> dict[str, Any]:
    out = dict(zip(_SUMMARY_KEYS, r))
    out["span_count"] = int(out["span_count"])
    for k in ("input_tokens", "output_tokens"):
        if out[k] is not None:
            out[k] = int(out[k])
    return out


def span_words(*payloads: str | None) -> list[str]:
    """The searchable words of a span's stored input and output (JSON string values only,
    split into runs of letters and digits, lower-cased), as the other stores index them."""
    return sorted(search_words(*payloads))


def _nan_none(v: Any) -> Any:
    return None if isinstance(v, float) and v != v else v


class ClickHouseStore:
    """The Store protocol over ClickHouse (clickhouse-connect). Thread-safe: the HTTP client
    runs concurrent queries (no session); the chDB client serialises them itself."""

    dialect_name = "clickhouse"

    def __init__(self, url: str, *, client: Any = None) -> None:
        self.url = redact_url(url)
        if url.startswith("chdb:"):  # tests: ClickHouse embedded in this process
            opts = {"database": "shipyard", "ttl_days": DEFAULT_TTL_DAYS, "settings": {}, "meta": "none"}
            parts = urlsplit(url)
            for k, v in parse_qsl(parts.query):
                if k == "ttl_days":
                    opts["ttl_days"] = int(v)
                elif k in ("database", "meta"):
                    opts[k] = v
            dsn = url.split("?", 1)[0]
        else:
            try:
                opts = parse_url(url)
            except ValueError as exc:
                from ..errors import ConfigError

                raise ConfigError(f"store: {exc}") from None
            dsn = None
        self.db: str = opts["database"]
        self.ttl_days: int = opts["ttl_days"]
        self.settings: dict[str, Any] = opts["settings"]
        self._lock = threading.Lock()
        if client is not None:
            self.client = client
        else:
            self.client = self._connect(opts, dsn)
        # the companion SQL store: relational features' tables (keys, prompts, feedback, ...)
        self.meta: Any = None
        if opts["meta"] != "none":
            from . import open_store

            self.meta = open_store(opts["meta"])
        self._migrate_clickhouse()

    def __getattr__(self, name: str) -> Any:
        """The SQL interface of the companion store (``dialect``, ``_read``, ``_write``, ...),
        for features that keep relational state; absent without one (the chDB test stores),
        which those features report as "needs a SQL store"."""
        if name in _RELATIONAL:
            meta = self.__dict__.get("meta")
            if meta is not None:
                return getattr(meta, name)
        raise AttributeError(name)

    def _connect(self, opts: dict[str, Any], dsn: str | None) -> Any:
        try:
            import clickhouse_connect
        except ImportError:
            from ..errors import ConfigError

            raise ConfigError("store: clickhouse:// needs the clickhouse extra: "
                              "pip install 'shipyard[clickhouse]'") from None
        try:
            if dsn is not None:
                return clickhouse_connect.get_client(dsn=dsn)
            return clickhouse_connect.get_client(
                host=opts["host"], port=opts["port"], username=opts["username"], password=opts["password"],
                secure=opts["secure"], database="default", settings=opts["settings"] or None,
                autogenerate_session_id=False, connect_timeout=10, send_receive_timeout=60,
                compress=True,
            )
        except Exception as exc:
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise StoreUnavailable(f"store: cannot connect to ClickHouse at {self.url}: {reason}") from None

    # ---- queries ------------------------------------------------------------------
    def _q(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return list(self.client.query(sql, parameters=params or {}).result_rows)

    def _cmd(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.client.command(sql, parameters=params or None)

    # ---- schema -------------------------------------------------------------------
    def migrate(self) -> list[tuple[str, int]]:
        """The companion store's pending migrations, then the ClickHouse tables (created
        if missing, TTL brought in line with ``ttl_days``); returns what was applied or
        created (a ClickHouse table as ``(name, 1)``)."""
        done = self.meta.migrate() if self.meta is not None else []
        return done + self._migrate_clickhouse()

    def _migrate_clickhouse(self) -> list[tuple[str, int]]:
        with self._lock:
            before = {r[0] for r in self._q("SELECT name FROM system.tables WHERE database = {db:String}",
                                            {"db": self.db})}
            for stmt in _schema(self.db, self.ttl_days):
                self._cmd(stmt)
            created = [(t, 1) for t in ("spans", "trace_summaries", "trace_summaries_mv", "llm_rollup_1m",
                                        "llm_rollup_1m_mv") if t not in before]
            for table, col in _TTL_TABLES.items():
                (create,) = self._q("SELECT create_table_query FROM system.tables WHERE database = {db:String} "
                                    "AND name = {t:String}", {"db": self.db, "t": table})[0]
                m = _TTL_RE.search(create)
                current = int(m.group(1) or m.group(2)) if m else 0
                if self.ttl_days and current != self.ttl_days:
                    self._cmd(f"ALTER TABLE {self.db}.{table} MODIFY TTL {col} + INTERVAL {self.ttl_days} DAY")
                elif not self.ttl_days and current:
                    self._cmd(f"ALTER TABLE {self.db}.{table} REMOVE TTL")
            return created

    # ---- writes -------------------------------------------------------------------
    def write_spans(self, spans: list[Span], dump: Callable[[Any], str | None]) -> None:
        """Insert a batch (one INSERT; the views update the summaries and rollups), skipping
        span ids already stored: spans are immutable and a retried batch is not counted twice."""
        seen: set[str] = set()
        batch = []
        for s in spans:
            if s.span_id not in seen:
                seen.add(s.span_id)
                batch.append(s)
        if not batch:
            return
        lo = min(s.start_time for s in batch) - 3600
        hi = max(s.start_time for s in batch) + 3600
        existing = {r[0] for r in self._q(
            f"SELECT span_id FROM {self.db}.spans WHERE start_time >= {{lo:Float64}} AND start_time <= {{hi:Float64}} "
            "AND span_id IN {ids:Array(String)}", {"lo": lo, "hi": hi, "ids": [s.span_id for s in batch]})}
        rows = []
        for s in batch:
            if s.span_id in existing:
                continue
            inp, out = dump(s.input), dump(s.output)
            rows.append([
                s.span_id, s.trace_id, s.parent_id, s.kind, s.name, float(s.start_time),
                None if s.end_time is None else float(s.end_time), s.duration_ms, s.status, s.error,
                _str(s.alias), _str(s.provider), _str(s.model), _str(s.response_model), _str(s.user_id),
                _str(s.session_id), _int(s.input_tokens), _int(s.output_tokens), _int(s.cached_tokens),
                _float(s.cost_usd), _float(s.ttft_ms), s.completion_id,
                orjson.dumps(s.attributes, default=str).decode() if s.attributes else None,
                inp, out, span_words(inp, out),
            ])
        if rows:
            self.client.insert(f"{self.db}.spans", rows, column_names=list(INSERT_COLUMNS))

    def purge(self, older_than: float) -> int:
        """Delete traces that started before ``older_than`` with all their spans, and rollup
        minutes before it (lightweight deletes; the TTL is the usual way to retire data)."""
        db = self.db
        ids_sql = (f"SELECT trace_id FROM {db}.trace_summaries WHERE day <= {day_sql('{t:Float64}')} "
                   "GROUP BY trace_id HAVING min(first_start) < {t:Float64}")
        p = {"t": older_than}
        (n,) = self._q(f"SELECT count() FROM {db}.spans WHERE trace_id IN ({ids_sql})", p)[0]
        if n:
            self._cmd(f"DELETE FROM {db}.spans WHERE trace_id IN ({ids_sql})", p)
        self._cmd(f"DELETE FROM {db}.trace_summaries WHERE trace_id IN ({ids_sql})", p)
        cutoff = int(older_than // 60) * 60
        self._cmd(f"DELETE FROM {db}.llm_rollup_1m WHERE ts < {{c:Int64}}", {"c": cutoff})
        return int(n)

    # ---- reads --------------------------------------------------------------------
    def list_traces(self, f: TraceFilter) -> tuple[list[dict[str, Any]], str | None]:
        start, end = f.window()
        db = self.db
        p: dict[str, Any] = {"lo": start, "hi": end}
        inner = [f"day >= {day_sql('{lo:Float64}')}", f"day <= {day_sql('{hi:Float64}')}",
                 "first_start >= {lo:Float64}", "first_start < {hi:Float64}"]
        if f.q:
            p["terms"] = search_terms(f.q)
            inner.append(f"trace_id IN (SELECT trace_id FROM {db}.spans WHERE start_time >= {{lo:Float64}} "
                         "AND hasAll(words, {terms:Array(String)}))")
        having = ["t_start >= {lo:Float64}", "t_start < {hi:Float64}"]
        for col, key, val in (("t_alias", "alias", f.alias), ("t_model", "model", f.model),
                              ("t_user", "user_id", f.user_id), ("t_session", "session_id", f.session_id),
                              ("t_status", "status", f.status)):
            if val is not None:
                having.append(f"{col} = {{{key}:String}}")
                p[key] = val
        for cond, key, val in (("t_cost >= {min_cost:Float64}", "min_cost", f.min_cost),
                               ("t_cost <= {max_cost:Float64}", "max_cost", f.max_cost),
                               ("t_duration >= {min_ms:Float64}", "min_ms", f.min_latency_ms),
                               ("t_duration <= {max_ms:Float64}", "max_ms", f.max_latency_ms)):
            if val is not None:  # an unknown cost or duration never satisfies a bound (NULL)
                having.append(cond)
                p[key] = float(val)
        if f.cursor:
            ts, tid = decode_cursor(f.cursor)
            having.append("(t_start, trace_id) < ({cts:Float64}, {ctid:String})")
            p["cts"], p["ctid"] = ts, tid
        n = f.page_size()
        p["limit"] = n + 1
        # candidates: traces with a partial row that started in the window; then every partial
        # row of those (a trace's earlier rows may lie before the window: it is then not listed)
        sql = (f"SELECT {_SUMMARY} FROM {db}.trace_summaries WHERE trace_id IN "
               f"(SELECT trace_id FROM {db}.trace_summaries WHERE {' AND '.join(inner)}) "
               f"GROUP BY trace_id HAVING {' AND '.join(having)} "
               "ORDER BY t_start DESC, trace_id DESC LIMIT {limit:UInt32}")
        rows = [_trace_row(r[:14]) for r in self._q(sql, p)]
        cursor = None
        if len(rows) > n:
            rows = rows[:n]
            cursor = encode_cursor(rows[-1]["start_time"], rows[-1]["trace_id"])
        return rows, cursor

    def _summary(self, trace_id: str) -> tuple | None:
        found = self._q(f"SELECT {_SUMMARY} FROM {self.db}.trace_summaries WHERE trace_id = {{id:String}} "
                        "GROUP BY trace_id", {"id": trace_id})
        return found[0] if found else None

    def get_trace(self, trace_id: str) -> dict[str, Any] | None:
        r = self._summary(trace_id)
        if r is None:
            return None
        first, last = r[1], r[14]
        cols = ", ".join(SPAN_COLUMNS)
        spans = [dict(zip(SPAN_COLUMNS, row)) for row in self._q(
            f"SELECT {cols} FROM {self.db}.spans WHERE start_time >= {{a:Float64}} AND start_time <= {{b:Float64}} "
            "AND trace_id = {id:String} ORDER BY start_time, span_id", {"a": first, "b": last, "id": trace_id})]
        for s in spans:
            for col in JSON_COLUMNS:
                if s[col] is not None:
                    s[col] = orjson.loads(s[col])
        return {**_trace_row(r[:14]), "spans": spans}

    def find_span_by_completion(self, completion_id: str) -> dict[str, Any] | None:
        found = self._q(f"SELECT span_id, trace_id FROM {self.db}.spans WHERE completion_id = {{c:String}} LIMIT 1",
                        {"c": completion_id})
        return {"span_id": found[0][0], "trace_id": found[0][1]} if found else None

    def dashboard(self, start: float, end: float, bucket_s: int) -> list[dict[str, Any]]:
        """Per bucket (epoch-aligned) and model: requests, errors, p50/p95 latency
        (t-digest), cost and tokens of the llm spans that started in [start, end). Whole
        minutes come from the rollup (the window widened to whole minutes), other bucket
        sizes from the spans."""
        if isinstance(bucket_s, bool) or not isinstance(bucket_s, int) or bucket_s <= 0:
            raise InvalidRequest("Invalid value for 'bucket_s': must be a positive whole number of seconds",
                                 param="bucket_s")
        limit = MAX_SPAN_BUCKETS if bucket_s % 60 else MAX_DASHBOARD_BUCKETS
        if (end - start) / bucket_s > limit:
            raise InvalidRequest(f"Too many buckets: at most {limit} of {bucket_s} s per dashboard query; "
                                 "use a larger 'bucket_s' or a shorter window", param="bucket_s")
        if end <= start:
            return []
        p: dict[str, Any] = {"b": bucket_s}
        if bucket_s % 60:
            p.update(lo=float(start), hi=float(end))
            sql = (f"SELECT intDiv(toInt64(floor(start_time)), {{b:Int64}}) * {{b:Int64}} AS bucket, "
                   "coalesce(response_model, model, '') AS m, count(), countIf(status = 'error'), "
                   "quantilesTDigest(0.5, 0.95)(duration_ms), sum(cost_usd), sum(input_tokens), sum(output_tokens), "
                   f"min(duration_ms), max(duration_ms) FROM {self.db}.spans "
                   "WHERE start_time >= {lo:Float64} AND start_time < {hi:Float64} AND kind = 'llm' "
                   "GROUP BY bucket, m ORDER BY bucket, m")
        else:
            p.update(lo=int(start // 60) * 60, hi=-int(-end // 60) * 60)
            sql = ("SELECT intDiv(ts, {b:Int64}) * {b:Int64} AS bucket, model, sum(requests), sum(errors), "
                   "quantilesTDigestMerge(0.5, 0.95)(latency), sum(cost), sum(tokens_in), sum(tokens_out), "
                   f"min(min_latency), max(max_latency) FROM {self.db}.llm_rollup_1m "
                   "WHERE ts >= {lo:Int64} AND ts < {hi:Int64} GROUP BY bucket, model ORDER BY bucket, model")
        out = []
        for bucket, model, n, errors, qs, cost, tin, tout, lo_ms, hi_ms in self._q(sql, p):
            p50, p95 = (_clamp(_nan_none(q), lo_ms, hi_ms) for q in (qs or [None, None]))
            out.append({
                "bucket_start": int(bucket),
                "model": model or None,
                "requests": int(n),
                "errors": int(errors),
                "p50_ms": p50,
                "p95_ms": p95,
                "cost_usd": None if cost is None else float(cost),
                "input_tokens": None if tin is None else int(tin),
                "output_tokens": None if tout is None else int(tout),
            })
        return out

    # ---- lifecycle ----------------------------------------------------------------
    def ping(self) -> bool:
        if self.meta is not None and not self.meta.ping():
            return False
        try:
            return bool(self.client.ping()) if hasattr(self.client, "ping") else bool(self._q("SELECT 1"))
        except Exception:
            return False

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # pragma: no cover - best effort
            pass
        if self.meta is not None:
            self.meta.close()


def _clamp(v: float | None, lo: float | None, hi: float | None) -> float | None:
    """A t-digest estimate kept inside the observed [min, max]."""
    if v is None:
        return None
    if lo is not None:
        v = max(v, lo)
    if hi is not None:
        v = min(v, hi)
    return round(float(v), 3)


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


__all__ = ["ClickHouseStore", "parse_url"]
