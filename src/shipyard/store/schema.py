"""The core schema of the trace store, as migration components.

- ``traces``: spans (insert-only) and one summary row per trace, upserted as spans arrive.
- ``trace_search``: free-text index over span inputs and outputs: words are runs of letters
  and digits (Unicode categories L and N), matched whole and case-insensitively, all words
  of a query required. SQLite: FTS5, contentless, no positions, in a file of its own written
  by a thread of its own (sqlite_search.py; here only the time ids it is keyed by).
  PostgreSQL: a ``tsvector`` of the same words (no positions) with a GIN index.
- ``llm_rollup``: per-minute and per-hour rollups of llm spans for dashboards.

Features with tables of their own register their own components beside these.
"""

from __future__ import annotations

from . import rollup
from .migrations import register

# SQLite numbers spans by start time: a span's rowid is its "time id", whole milliseconds
# shifted left 12 bits plus low bits that tell apart spans of one millisecond. The table is
# then laid out in time order, and the search index (keyed by the same rowid) can bound every
# search by the time window inside the index itself.
TIME_ID_SHIFT = 12
TIME_ID_SQL = f"(MAX(0, CAST(start_time * 1000 AS INTEGER)) << {TIME_ID_SHIFT})"


def time_id_floor(t: float) -> int:
    """The smallest time id of a span that started at or after ``t``."""
    return max(0, int(t * 1000)) << TIME_ID_SHIFT


register("traces", [
    # 1: spans and trace summaries
    """
    CREATE TABLE spans (
        span_id TEXT PRIMARY KEY,
        trace_id TEXT NOT NULL,
        parent_id TEXT,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        start_time DOUBLE PRECISION NOT NULL,
        end_time DOUBLE PRECISION,
        duration_ms DOUBLE PRECISION,
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
        cost_usd DOUBLE PRECISION,
        ttft_ms DOUBLE PRECISION,
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
        start_time DOUBLE PRECISION NOT NULL,
        end_time DOUBLE PRECISION,
        name TEXT,
        status TEXT NOT NULL,
        span_count INTEGER NOT NULL,
        alias TEXT,
        model TEXT,
        user_id TEXT,
        session_id TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cost_usd DOUBLE PRECISION,
        duration_ms DOUBLE PRECISION
    );
    CREATE INDEX traces_time ON traces(start_time DESC, trace_id DESC);
    CREATE INDEX traces_user ON traces(user_id, start_time);
    CREATE INDEX traces_session ON traces(session_id, start_time);
    CREATE INDEX traces_alias ON traces(alias, start_time);
    CREATE INDEX traces_model ON traces(model, start_time);
    CREATE INDEX traces_status ON traces(status, start_time);
    """,
    # 2: cost and latency filters
    """
    CREATE INDEX traces_cost ON traces(cost_usd, start_time);
    CREATE INDEX traces_latency ON traces(duration_ms, start_time);
    """,
    # 3: PostgreSQL compresses payloads with lz4 (several times faster to write than the
    # default pglz) where the server has it
    {
        "sqlite": "",
        "postgresql": """
        DO $$
        BEGIN
            EXECUTE 'ALTER TABLE spans ALTER COLUMN input SET COMPRESSION lz4, '
                    'ALTER COLUMN output SET COMPRESSION lz4, ALTER COLUMN attributes SET COMPRESSION lz4';
        EXCEPTION WHEN feature_not_supported OR syntax_error OR invalid_parameter_value THEN
            NULL;
        END
        $$;
        """,
    },
])

register("trace_search", [
    {
        # Spans written before this step are renumbered by start time (see TIME_ID_SQL). (This
        # step also built an FTS5 index in the database itself, until step 3 moved it out.)
        "sqlite": f"""
        CREATE TEMP TABLE _time_ids AS
            SELECT rowid AS old,
                   {TIME_ID_SQL} | ((ROW_NUMBER() OVER (PARTITION BY {TIME_ID_SQL} ORDER BY rowid) - 1) & 4095) AS new
            FROM spans;
        CREATE INDEX temp._time_ids_old ON _time_ids(old);
        UPDATE spans SET rowid = -rowid;
        UPDATE spans SET rowid = (SELECT new FROM _time_ids WHERE old = -spans.rowid);
        DROP TABLE _time_ids;
        """,
        # The tsvector is built by the store (words as SQLite's tokenizer sees them, lower-cased,
        # no positions) and cast, which is several times faster than to_tsvector's parser.
        # No PostgreSQL store predates this component, so there is nothing to backfill.
        "postgresql": """
        CREATE TABLE span_search (
            trace_id TEXT NOT NULL,
            start_time DOUBLE PRECISION NOT NULL,
            tsv tsvector NOT NULL
        );
        CREATE INDEX span_search_tsv ON span_search USING GIN (tsv);
        CREATE INDEX span_search_trace ON span_search (trace_id);
        """,
    },
    # 2: PostgreSQL: the GIN index gathers new entries in a pending list of 16 MB (not 4)
    # before merging them into the index: each word's posting list is then rewritten once
    # per ~8 batches instead of once per two. A search reads the pending list whole (~20 ms
    # at 16 MB, ~45 ms at 32 MB). Search vectors are compressed with lz4 where the server has it.
    {
        "sqlite": "",
        "postgresql": """
        ALTER INDEX span_search_tsv SET (gin_pending_list_limit = 16384);
        DO $$
        BEGIN
            EXECUTE 'ALTER TABLE span_search ALTER COLUMN tsv SET COMPRESSION lz4';
        EXCEPTION WHEN feature_not_supported OR syntax_error OR invalid_parameter_value THEN
            NULL;
        END
        $$;
        """,
    },
    # 3: SQLite: the index moves to a file of its own (sqlite_search.py rebuilds it there)
    {
        "sqlite": """
        DROP TABLE IF EXISTS spans_fts_vocab;
        DROP TABLE IF EXISTS spans_fts;
        """,
        "postgresql": "",
    },
])

register("llm_rollup", [
    rollup.create_sql("llm_rollup_1m") + rollup.create_sql("llm_rollup_1h"),
    {
        "sqlite": "".join(rollup.sqlite_backfill_sql(t, w) for t, w in rollup.TABLES.items()),
        "postgresql": "",
    },
])
