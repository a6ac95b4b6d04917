"""Tables owned by releases (migration component ``releases``; append steps, never edit).

- ``prompts``, ``prompt_versions`` (immutable), ``prompt_labels`` (movable pointers)
- ``release_audit``: who changed which label or promoted what, when, and the gate's verdict
- ``shadow_results``: one row per shadow candidate call, compared with production
- ``experiment_exposures``: one row per llm call assigned to an experiment variant
"""

from __future__ import annotations

from ..store.migrations import register

register("releases", [
    # 1: prompt registry, audit, shadow results, experiment exposures
    """
    CREATE TABLE prompts (
        name TEXT PRIMARY KEY,
        description TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        created_by TEXT
    );
    CREATE TABLE prompt_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        model TEXT NOT NULL,
        messages TEXT NOT NULL,
        params TEXT,
        response_schema TEXT,
        variables TEXT NOT NULL,
        note TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        created_by TEXT,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE prompt_labels (
        name TEXT NOT NULL,
        label TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        updated_by TEXT,
        PRIMARY KEY (name, label)
    );
    CREATE TABLE release_audit (
        id TEXT PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        prompt TEXT,
        label TEXT,
        from_version INTEGER,
        to_version INTEGER,
        gate TEXT,
        gate_passed INTEGER,
        detail TEXT
    );
    CREATE INDEX release_audit_time ON release_audit(ts, id);
    CREATE INDEX release_audit_prompt ON release_audit(prompt, ts);
    CREATE TABLE shadow_results (
        id TEXT PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        alias TEXT NOT NULL,
        candidate TEXT NOT NULL,
        target TEXT,
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        prompt TEXT,
        status TEXT NOT NULL,
        error TEXT,
        latency_ms DOUBLE PRECISION,
        prod_latency_ms DOUBLE PRECISION,
        cost_usd DOUBLE PRECISION,
        prod_cost_usd DOUBLE PRECISION,
        input_tokens INTEGER,
        output_tokens INTEGER,
        model TEXT,
        prod_model TEXT,
        exact_match INTEGER,
        json_equal INTEGER,
        similarity DOUBLE PRECISION,
        judge_score DOUBLE PRECISION,
        output TEXT,
        prod_output TEXT
    );
    CREATE INDEX shadow_results_alias ON shadow_results(alias, ts);
    CREATE INDEX shadow_results_time ON shadow_results(ts);
    CREATE INDEX shadow_results_trace ON shadow_results(trace_id);
    CREATE TABLE experiment_exposures (
        span_id TEXT PRIMARY KEY,
        experiment TEXT NOT NULL,
        variant TEXT NOT NULL,
        unit TEXT,
        trace_id TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        latency_ms DOUBLE PRECISION,
        cost_usd DOUBLE PRECISION
    );
    CREATE INDEX experiment_exposures_exp ON experiment_exposures(experiment, ts);
    CREATE INDEX experiment_exposures_trace ON experiment_exposures(trace_id);
    """,
])
