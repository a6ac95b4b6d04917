"""The tables of feedback and review, as migration components of their own.

- ``feedback``: one row per feedback event (explicit or implicit), addressed to a trace and,
  when known, the llm span it is about. The dimensions the analytics group by (alias, model,
  prompt version, route) and the trace's start time are copied onto the row when it is
  written, so the stats are one indexed query with no join into the spans. An idempotency
  key is unique: a retried event is stored once.
- ``outcomes``: numeric business metrics per session (or per trace), joined to the traces of
  that session when reported.
- ``review``: the daily review queue (``review_days`` says a day's sample is materialised;
  ``review_queue`` holds its items in order) and ``human_labels``: one row per (trace,
  criterion) with ``label`` pass or fail — the table judge alignment reads
  (shipyard.evals.alignment.labels_from_store).
"""

from __future__ import annotations


from ..store.migrations import migrate_once, register

register("feedback", [
    """
    CREATE TABLE feedback (
        feedback_id TEXT PRIMARY KEY,
        idempotency_key TEXT,
        request_hash TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        span_id TEXT,
        completion_id TEXT,
        kind TEXT NOT NULL,
        value DOUBLE PRECISION,
        label TEXT,
        text TEXT,
        score_norm DOUBLE PRECISION,
        sentiment INTEGER NOT NULL,
        source TEXT NOT NULL,
        user_id TEXT,
        session_id TEXT,
        principal TEXT,
        metadata TEXT,
        alias TEXT,
        model TEXT,
        prompt_version TEXT,
        route TEXT,
        trace_time DOUBLE PRECISION NOT NULL,
        trace_ts BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE UNIQUE INDEX feedback_idempotency ON feedback(idempotency_key);
    CREATE INDEX feedback_trace ON feedback(trace_id);
    CREATE INDEX feedback_time ON feedback(trace_ts);
    CREATE INDEX feedback_created ON feedback(created_at);
    CREATE TABLE outcomes (
        outcome_id TEXT PRIMARY KEY,
        idempotency_key TEXT,
        request_hash TEXT NOT NULL,
        session_id TEXT,
        trace_id TEXT,
        name TEXT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        metadata TEXT,
        principal TEXT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE UNIQUE INDEX outcomes_idempotency ON outcomes(idempotency_key);
    CREATE INDEX outcomes_session ON outcomes(session_id);
    CREATE INDEX outcomes_trace ON outcomes(trace_id);
    CREATE INDEX outcomes_created ON outcomes(created_at);
    """,
])

register("review", [
    """
    CREATE TABLE review_days (
        day TEXT PRIMARY KEY,
        window_start DOUBLE PRECISION NOT NULL,
        window_end DOUBLE PRECISION NOT NULL,
        size INTEGER NOT NULL,
        candidates INTEGER NOT NULL,
        params TEXT,
        created_by TEXT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE review_queue (
        day TEXT NOT NULL,
        position INTEGER NOT NULL,
        trace_id TEXT NOT NULL,
        span_id TEXT,
        stratum TEXT NOT NULL,
        reasons TEXT NOT NULL,
        alias TEXT,
        model TEXT,
        prompt_version TEXT,
        trace_time DOUBLE PRECISION,
        verdict TEXT,
        reviewer TEXT,
        reviewed_at DOUBLE PRECISION,
        PRIMARY KEY (day, trace_id)
    );
    CREATE INDEX review_queue_trace ON review_queue(trace_id);
    CREATE TABLE human_labels (
        trace_id TEXT NOT NULL,
        criterion TEXT NOT NULL,
        span_id TEXT,
        label TEXT NOT NULL,
        tags TEXT NOT NULL,
        note TEXT,
        reviewer TEXT,
        origin TEXT NOT NULL,
        day TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (trace_id, criterion)
    );
    CREATE INDEX human_labels_criterion ON human_labels(criterion, updated_at);
    CREATE INDEX human_labels_time ON human_labels(updated_at);
    """,
])

# Apply this package's migrations to a store opened before it was imported (once per store).
ensure_schema = migrate_once()
