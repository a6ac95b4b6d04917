"""The tables of datasets and evaluations, as migration components of their own.

- ``datasets``: a dataset is a name; each version is an immutable, ordered list of
  *segments* (batches of items written once). ``add_items`` publishes a new version whose
  segments are the previous version's plus one new segment, so items are never copied.
  A version row is written last, in one short transaction, so a half-written import is
  never visible (its orphan segment is ignored).
- ``evals``: runs, one result row per (run, variant, case, repeat) (the resume key), one
  score row per evaluator, pairwise verdicts, and judge alignment (versioned criteria and
  judges, alignment reports and per-label verdicts). The ``*_agg`` indexes cover the report's
  aggregates, so a report reads an index in group order (no sort, flat memory).
"""

from __future__ import annotations


from ..store.migrations import migrate_once, register

register("datasets", [
    """
    CREATE TABLE datasets (
        name TEXT PRIMARY KEY,
        description TEXT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE dataset_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        segments TEXT NOT NULL,
        item_count INTEGER NOT NULL,
        holdout_count INTEGER NOT NULL,
        description TEXT,
        source TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE dataset_items (
        segment_id BIGINT NOT NULL,
        seq INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        input TEXT NOT NULL,
        expected TEXT,
        metadata TEXT,
        split TEXT NOT NULL,
        trace_id TEXT,
        PRIMARY KEY (segment_id, seq)
    );
    CREATE INDEX dataset_items_id ON dataset_items(segment_id, item_id);
    """,
])

register("evals", [
    """
    CREATE TABLE eval_runs (
        run_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        dataset TEXT,
        dataset_version INTEGER,
        split TEXT,
        repeats INTEGER NOT NULL,
        total INTEGER,
        spec TEXT NOT NULL,
        spec_path TEXT
    );
    CREATE INDEX eval_runs_time ON eval_runs(created_at);
    CREATE TABLE eval_variants (
        run_id TEXT NOT NULL,
        variant TEXT NOT NULL,
        position INTEGER NOT NULL,
        prompt TEXT,
        model TEXT,
        params TEXT,
        PRIMARY KEY (run_id, variant)
    );
    CREATE TABLE eval_results (
        run_id TEXT NOT NULL,
        variant TEXT NOT NULL,
        case_id TEXT NOT NULL,
        rep INTEGER NOT NULL,
        status TEXT NOT NULL,
        passed INTEGER,
        score DOUBLE PRECISION,
        output TEXT,
        error TEXT,
        trace_id TEXT,
        model TEXT,
        latency_ms DOUBLE PRECISION,
        cost_usd DOUBLE PRECISION,
        input_tokens INTEGER,
        output_tokens INTEGER,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (run_id, variant, case_id, rep)
    );
    CREATE INDEX eval_results_latency ON eval_results(run_id, variant, latency_ms);
    CREATE INDEX eval_results_trace ON eval_results(trace_id);
    CREATE INDEX eval_results_agg ON eval_results(run_id, variant, status, passed, score, cost_usd, latency_ms,
                                                  input_tokens, output_tokens);
    CREATE TABLE eval_scores (
        run_id TEXT NOT NULL,
        variant TEXT NOT NULL,
        case_id TEXT NOT NULL,
        rep INTEGER NOT NULL,
        evaluator TEXT NOT NULL,
        criterion TEXT,
        passed INTEGER,
        score DOUBLE PRECISION,
        errored INTEGER NOT NULL,
        reason TEXT,
        error TEXT,
        trace_id TEXT,
        cost_usd DOUBLE PRECISION,
        PRIMARY KEY (run_id, variant, case_id, rep, evaluator)
    );
    CREATE INDEX eval_scores_trace ON eval_scores(trace_id);
    CREATE INDEX eval_scores_agg ON eval_scores(run_id, variant, evaluator, errored, passed, score, cost_usd);
    CREATE TABLE eval_pairwise (
        run_id TEXT NOT NULL,
        evaluator TEXT NOT NULL,
        variant_a TEXT NOT NULL,
        variant_b TEXT NOT NULL,
        case_id TEXT NOT NULL,
        rep INTEGER NOT NULL,
        winner TEXT,
        reason TEXT,
        error TEXT,
        PRIMARY KEY (run_id, evaluator, variant_a, variant_b, case_id, rep)
    );
    CREATE TABLE eval_criteria (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        description TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE eval_judges (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        criterion TEXT NOT NULL,
        spec TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE eval_alignments (
        alignment_id TEXT NOT NULL,
        judge TEXT NOT NULL,
        judge_version INTEGER NOT NULL,
        criterion TEXT NOT NULL,
        criterion_version INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        source TEXT,
        n INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        agreement DOUBLE PRECISION,
        kappa DOUBLE PRECISION,
        tpr DOUBLE PRECISION,
        tnr DOUBLE PRECISION,
        coverage DOUBLE PRECISION,
        false_failure_rate DOUBLE PRECISION,
        alignment DOUBLE PRECISION,
        selected INTEGER NOT NULL,
        PRIMARY KEY (alignment_id, judge)
    );
    CREATE TABLE eval_alignment_verdicts (
        alignment_id TEXT NOT NULL,
        judge TEXT NOT NULL,
        label_key TEXT NOT NULL,
        trace_id TEXT,
        human INTEGER NOT NULL,
        verdict INTEGER,
        reason TEXT,
        error TEXT,
        PRIMARY KEY (alignment_id, judge, label_key)
    );
    """,
])

# Apply this package's migrations to a store opened before it was imported (once per store).
ensure_schema = migrate_once()
