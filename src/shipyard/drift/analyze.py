"""One drift analysis: reference vs current, returned as a JSON-able summary.

The summary (``version`` 1) is what the HTML report, the web UI, the scheduled check and
its webhook all show:

- ``verdict``: "drift", "no drift" or "not enough data" (either side below ``min_samples``)
- ``structural``: per side (input, output, call) a list of checks, one per descriptor
- ``semantic``: per side (input, output) a domain classifier and topic clusters
- ``quality``: judge scores and feedback rates ("no data" when there are none)
- ``drifted``: the names of the checks that drifted, e.g. ``output.json_valid``
- ``probe``: the nondeterminism probe, when it was run
"""

from __future__ import annotations

import time
from typing import Any

from .deps import require_numeric
from .records import Collected, Shape, collect
from .spec import Spec, parse_spec
from .thresholds import resolve

DEFAULT_MAX_SEMANTIC = 2000
NUMERIC = {
    "input": ("chars", "tokens", "non_dictionary_share"),
    "output": ("chars", "tokens", "non_dictionary_share"),
    "call": ("latency_ms", "cost_usd"),
}
CATEGORICAL = {
    "input": ("json_valid", "casing", "language", "empty"),
    "output": ("json_valid", "schema_adherence", "casing", "language", "refusal", "empty", "tool_call"),
    "call": (),
}
LABELS = {
    "chars": "length (characters)", "tokens": "length (tokens, approx.)",
    "non_dictionary_share": "share of non-dictionary words", "json_valid": "valid JSON",
    "schema_adherence": "schema adherence", "casing": "casing", "language": "language",
    "empty": "empty", "refusal": "refusal", "tool_call": "tool call", "latency_ms": "latency (ms)",
    "cost_usd": "cost (USD)", "feedback_rate": "feedback rate", "feedback_positive": "positive feedback",
}


def label(name: str) -> str:
    if name.startswith("judge:"):
        return "judge score: " + name[len("judge:"):]
    return LABELS.get(name, name)


def _side(col_r: Any, col_c: Any, side: str, th: dict[str, float]) -> list[dict[str, Any]]:
    from .stats import compare_categorical, compare_numeric

    checks = []
    for name in NUMERIC[side]:
        r, c = col_r.num.get(name, []), col_c.num.get(name, [])
        if not len(r) and not len(c):
            continue
        checks.append(compare_numeric(name, side, r, c, th))
    for name in CATEGORICAL[side]:
        r, c = col_r.cat.get(name, []), col_c.cat.get(name, [])
        if not r and not c:
            continue
        checks.append(compare_categorical(name, side, r, c, th))
    for chk in checks:
        chk["label"] = label(chk["name"])
    return checks


def _texts(c: Collected, which: str) -> list[str]:
    return [getattr(s, which) for s in c.sample if getattr(s, which)]


def run_analysis(store: Any, reference: str | Spec, current: str | Spec, *, embedder: Any = "light",
                 thresholds: dict[str, Any] | None = None, max_semantic: int = DEFAULT_MAX_SEMANTIC,
                 max_records: int | None = None, alias: str | None = None, datasets: Any = None,
                 semantic: bool = True, engine: Any = None, seed: int = 0,
                 now: float | None = None) -> dict[str, Any]:
    """Compare ``reference`` with ``current`` (specs as in spec.py, or parsed Specs).

    ``embedder``: a name (see embedders.py) or an Embedder; ``max_semantic``: at most this
    many records per window (uniform reservoir sample) go to the semantic analysis;
    ``max_records``: cap on the records read per window (None: all); ``datasets``: the
    Datasets class/instance for dataset references (default: shipyard.evals.datasets)."""
    require_numeric()
    from .semantic import analyze as semantic_analyze
    from .signals import compare_feedback, compare_judges, overall
    from .stats import DRIFT, NO_DRIFT, NOT_ENOUGH, apply_p_values

    th = resolve(thresholds)
    now = time.time() if now is None else now
    ref = reference if isinstance(reference, Spec) else parse_spec(reference, param="reference", now=now)
    cur = current if isinstance(current, Spec) else parse_spec(current, param="current", now=now)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # the reference first: its outputs define the JSON shape the current outputs are held to
    rc = collect(store, ref, checker=None, keep_shapes=True, max_semantic=max_semantic if semantic else 0,
                 seed=seed, datasets=datasets, alias=alias, limit=max_records)
    shape = Shape.infer(rc.shapes)
    rc.finish_shapes(shape)
    t1 = time.perf_counter()
    timings["read_reference_s"] = round(t1 - t0, 3)
    cc = collect(store, cur, checker=shape, keep_shapes=False, max_semantic=max_semantic if semantic else 0,
                 seed=seed + 1, datasets=datasets, alias=alias, limit=max_records)
    t2 = time.perf_counter()
    timings["read_current_s"] = round(t2 - t1, 3)

    structural = {side: _side(getattr(rc, side), getattr(cc, side), side, th) for side in ("input", "output", "call")}
    all_structural = [c for side in structural.values() for c in side]
    apply_p_values(all_structural, th)
    t3 = time.perf_counter()
    timings["structural_s"] = round(t3 - t2, 3)

    sem: dict[str, Any] = {"embedder": None, "cap_per_window": max_semantic,
                           "sampled": {"reference": len(rc.sample), "current": len(cc.sample)},
                           "subsampled": rc.n > len(rc.sample) or cc.n > len(cc.sample)}
    if semantic and max_semantic > 0:
        from .embedders import get_embedder

        emb = get_embedder(embedder, engine=engine) if isinstance(embedder, str) or embedder is None else embedder
        sem["embedder"] = emb.name
        for side in ("input", "output"):
            sem[side] = semantic_analyze(emb, _texts(rc, side), _texts(cc, side), th, seed)
    else:
        sem["verdict"] = "skipped"
    t4 = time.perf_counter()
    timings["semantic_s"] = round(t4 - t3, 3)

    judges = compare_judges(store, ref, cur, th)
    feedback = compare_feedback(store, ref, cur, th)
    quality_checks = judges["checks"] + feedback["checks"]
    for chk in quality_checks:
        chk["label"] = label(chk["name"])
    apply_p_values(quality_checks, th)
    for block in (judges, feedback):
        if block["verdict"] is None:
            block["verdict"] = overall(block["checks"])
    timings["quality_s"] = round(time.perf_counter() - t4, 3)

    drifted = [f"{c['side']}.{c['name']}" for c in all_structural if c["verdict"] == DRIFT]
    for side in ("input", "output"):
        block = sem.get(side)
        if not block:
            continue
        if block["domain_classifier"].get("verdict") == DRIFT:
            drifted.append(f"semantic.{side}.domain_classifier")
        if block["topics"].get("verdict") == DRIFT:
            drifted.append(f"semantic.{side}.topics")
    drifted += [f"quality.{c['name']}" for c in quality_checks if c["verdict"] == DRIFT]

    min_n = int(th["min_samples"])
    enough = rc.n >= min_n and cc.n >= min_n
    if drifted:
        verdict = DRIFT
    elif not enough:
        verdict = NOT_ENOUGH
    else:
        verdict = NO_DRIFT
    reason = None
    if not enough:
        reason = (f"not enough data: the reference has {rc.n} records and the current window {cc.n}; "
                  f"at least {min_n} are needed in each")
    summary = {
        "version": 1,
        "generated_at": now,
        "verdict": verdict,
        "reason": reason,
        "drifted": drifted,
        "reference": {**ref.to_dict(), "records": rc.n, "outputs": rc.n_outputs},
        "current": {**cur.to_dict(), "records": cc.n, "outputs": cc.n_outputs, "alias": alias},
        "thresholds": th,
        "schema": shape.describe(),
        "structural": structural,
        "semantic": sem,
        "quality": {"judge_scores": judges, "feedback": feedback},
        "probe": None,
        "timings": {**timings, "total_s": round(time.perf_counter() - t0, 3)},
        "notes": _notes(rc, cc, sem, max_records),
    }
    return summary


def _notes(rc: Collected, cc: Collected, sem: dict[str, Any], max_records: int | None) -> list[str]:
    notes = []
    if sem.get("subsampled"):
        notes.append(f"Semantic analysis used a uniform random sample of at most {sem['cap_per_window']} records "
                     f"per window ({sem['sampled']['reference']} reference, {sem['sampled']['current']} current); "
                     "structural descriptors used every record read.")
    if max_records is not None and (rc.n >= max_records or cc.n >= max_records):
        notes.append(f"At most {max_records} records were read per window (the oldest first).")
    if rc.spec.kind == "dataset" and rc.n and not rc.call.num:
        notes.append("The reference dataset has no latency or cost (none in item metadata, no linked traces).")
    return notes
