"""Quality signals across the windows: judge scores and feedback rates.

Judge scores come from evaluator spans recorded in a window (online judges; the score is
``attributes.score``, ``output.score`` or a numeric ``output``, per evaluator name) or, for a
dataset reference, from the ``eval_scores`` of eval runs on that dataset. Feedback comes
from a ``feedback`` table when one exists (its columns are discovered: a trace id, a time,
and a score/value/rating when present). Whatever is missing is reported as "no data",
never as an error.
"""

from __future__ import annotations

from typing import Any

import orjson

from .spec import Spec
from .stats import DRIFT, NO_DATA, NO_DRIFT, NOT_ENOUGH, compare_counts, compare_numeric

MAX_SCORES = 200_000
TIME_COLUMNS = ("trace_time", "created_at", "time", "timestamp", "ts", "start_time", "recorded_at")
VALUE_COLUMNS = ("sentiment", "score", "value", "rating", "thumbs", "label")


def table_columns(store: Any, table: str) -> list[str]:
    """The columns of ``table``, [] when it does not exist."""
    try:
        with store._read() as cur:
            if store.dialect.name == "sqlite":
                cur.execute(f"PRAGMA table_info({table})")
                return [r[1] for r in cur.fetchall()]
            cur.execute(store.dialect.q("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                                        "AND table_schema = current_schema() ORDER BY ordinal_position"), (table,))
            return [r[0] for r in cur.fetchall()]
    except Exception:
        return []


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _loads(text: Any) -> Any:
    if text is None or not isinstance(text, (str, bytes)):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def judge_scores(store: Any, spec: Spec) -> dict[str, list[float]]:
    """Scores per evaluator name for one side."""
    out: dict[str, list[float]] = {}
    q = store.dialect.q
    if spec.kind == "window":
        with store._read() as cur:
            cur.execute(q("SELECT name, attributes, output FROM spans WHERE kind = 'evaluator' "
                          "AND start_time >= ? AND start_time < ? LIMIT ?"), (spec.start, spec.end, MAX_SCORES))
            rows = cur.fetchall()
        for name, attrs, output in rows:
            a = _loads(attrs) or {}
            o = _loads(output)
            score = _num(a.get("score")) if isinstance(a, dict) else None
            if score is None and isinstance(o, dict):
                score = _num(o.get("score"))
            if score is None:
                score = _num(o)
            if score is None:
                continue
            key = (a.get("evaluator") if isinstance(a, dict) else None) or name
            out.setdefault(str(key), []).append(score)
        return out
    if not table_columns(store, "eval_scores") or not table_columns(store, "eval_runs"):
        return out
    args: list[Any] = [spec.name]
    sql = ("SELECT s.evaluator, s.score, s.passed FROM eval_scores s JOIN eval_runs r ON r.run_id = s.run_id "
           "WHERE r.dataset = ?")
    if spec.version is not None:
        sql += " AND r.dataset_version = ?"
        args.append(spec.version)
    sql += " LIMIT ?"
    args.append(MAX_SCORES)
    with store._read() as cur:
        cur.execute(q(sql), args)
        for evaluator, score, passed in cur.fetchall():
            v = _num(score) if score is not None else (None if passed is None else float(bool(passed)))
            if v is not None:
                out.setdefault(str(evaluator), []).append(v)
    return out


def compare_judges(store: Any, ref: Spec, cur: Spec, th: dict[str, float]) -> dict[str, Any]:
    rs, cs = judge_scores(store, ref), judge_scores(store, cur)
    names = sorted(set(rs) & set(cs))
    if not names:
        why = ("no judge scores in either side" if not rs and not cs else
               f"no evaluator has scores on both sides (reference: {', '.join(sorted(rs)) or 'none'}; "
               f"current: {', '.join(sorted(cs)) or 'none'})")
        return {"verdict": NO_DATA, "reason": why, "checks": []}
    checks = [compare_numeric(f"judge:{n}", "quality", rs[n], cs[n], th) for n in names]
    return {"verdict": None, "checks": checks}  # set by overall() once p-value verdicts are in


def overall(checks: list[dict[str, Any]]) -> str:
    verdicts = {c.get("verdict") for c in checks}
    if DRIFT in verdicts:
        return DRIFT
    if verdicts <= {NOT_ENOUGH} and verdicts:
        return NOT_ENOUGH
    return NO_DRIFT


def _llm_calls(store: Any, start: float, end: float) -> int:
    with store._read() as cur:
        cur.execute(store.dialect.q("SELECT COUNT(*) FROM spans WHERE kind = 'llm' AND start_time >= ? "
                                    "AND start_time < ?"), (start, end))
        return int(cur.fetchone()[0])


def feedback_for_window(store: Any, spec: Spec, cols: list[str]) -> dict[str, Any] | None:
    tcol = next((c for c in TIME_COLUMNS if c in cols), None)
    if spec.kind != "window" or tcol is None:
        return None
    vcol = next((c for c in VALUE_COLUMNS if c in cols), None)
    sel = f"trace_id, {vcol}" if vcol and "trace_id" in cols else ("trace_id" if "trace_id" in cols else "1")
    with store._read() as cur:
        cur.execute(store.dialect.q(f"SELECT {sel} FROM feedback WHERE {tcol} >= ? AND {tcol} < ? LIMIT ?"),
                    (spec.start, spec.end, MAX_SCORES))
        rows = cur.fetchall()
    traces = {r[0] for r in rows} if "trace_id" in cols else None
    values = [_value(r[1]) for r in rows] if vcol and "trace_id" in cols else []
    values = [v for v in values if v is not None]
    calls = _llm_calls(store, spec.start, spec.end)  # type: ignore[arg-type]
    with_fb = len(traces) if traces is not None else len(rows)
    return {"feedback": len(rows), "calls": calls, "with_feedback": min(with_fb, calls),
            "positive": sum(1 for v in values if v > 0), "rated": len(values)}


def _value(v: Any) -> float | None:
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("up", "thumbs_up", "positive", "good", "yes", "true", "like", "+1"):
            return 1.0
        if low in ("down", "thumbs_down", "negative", "bad", "no", "false", "dislike", "-1"):
            return -1.0
        try:
            return float(low)
        except ValueError:
            return None
    return _num(v)


def compare_feedback(store: Any, ref: Spec, cur: Spec, th: dict[str, float]) -> dict[str, Any]:
    cols = table_columns(store, "feedback")
    if not cols:
        return {"verdict": NO_DATA, "reason": "no feedback table in this store (no feedback recorded yet)",
                "checks": []}
    try:
        r = feedback_for_window(store, ref, cols)
        c = feedback_for_window(store, cur, cols)
    except Exception as exc:  # an unexpected feedback schema: say so, do not fail the report
        return {"verdict": NO_DATA, "reason": f"the feedback table could not be read ({type(exc).__name__})",
                "checks": []}
    if r is None or c is None:
        why = ("feedback rates need a time window on both sides (a dataset has no production feedback)"
               if ref.kind == "dataset" or cur.kind == "dataset" else
               "the feedback table has no time column (one of: " + ", ".join(TIME_COLUMNS) + ")")
        return {"verdict": NO_DATA, "reason": why, "checks": []}
    if not r["feedback"] and not c["feedback"]:
        return {"verdict": NO_DATA, "reason": "no feedback in either window", "checks": [],
                "reference": r, "current": c}
    rate = compare_counts(
        "feedback_rate", "quality",
        {"with feedback": r["with_feedback"], "without": max(0, r["calls"] - r["with_feedback"])},
        {"with feedback": c["with_feedback"], "without": max(0, c["calls"] - c["with_feedback"])}, th)
    checks = [rate]
    if r["rated"] or c["rated"]:
        checks.append(compare_counts(
            "feedback_positive", "quality",
            {"positive": r["positive"], "not positive": r["rated"] - r["positive"]},
            {"positive": c["positive"], "not positive": c["rated"] - c["positive"]}, th))
    return {"verdict": None, "checks": checks, "reference": r, "current": c}
