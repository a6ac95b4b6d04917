"""Feedback analytics: rates over time by alias, model, prompt version or route.

Feedback is counted by the time of the call it is about (``trace_time``), so a bucket says
how the traffic of that hour or day was received, whenever the feedback came in. Per bucket
and group: events, positive / negative / neutral counts and rates, the mean normalised score
(0..1) of ``score`` events, and the number of traces with feedback. Outcomes (business
metrics per session) are joined to the calls of their session and averaged per group.
"""

from __future__ import annotations

from typing import Any

from .schema import ensure_schema

DIMENSIONS = ("alias", "model", "prompt_version", "route")
MAX_OUTCOMES = 20_000
UNKNOWN = "(none)"


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def _row(group: str, total: int, pos: int, neg: int, score_sum: float | None, scores: int,
         traces: int | None = None) -> dict[str, Any]:
    out = {"group": group, "total": total, "positive": pos, "negative": neg, "neutral": total - pos - neg,
           "positive_rate": _rate(pos, total), "negative_rate": _rate(neg, total),
           "mean_score": round(float(score_sum) / scores, 4) if scores and score_sum is not None else None,
           "scores": scores}
    if traces is not None:
        out["traces"] = traces
    return out


def feedback_stats(store: Any, start: float, end: float, bucket_s: int, by: str = "alias", *,
                   source: str | None = None, kind: str | None = None,
                   service: Any = None) -> dict[str, Any]:
    """The /api/feedback/stats answer (see the module docstring)."""
    if by not in DIMENSIONS:
        raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}")
    ensure_schema(store)
    q = store.dialect.q
    where = ["trace_ts >= ?", "trace_ts < ?"]
    args: list[Any] = [int(start), int(end) + 1]
    for col, val in (("source", source), ("kind", kind)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    cond = " AND ".join(where)
    counts = ("COUNT(*), SUM(CASE WHEN sentiment > 0 THEN 1 ELSE 0 END), "
              "SUM(CASE WHEN sentiment < 0 THEN 1 ELSE 0 END), SUM(score_norm), COUNT(score_norm)")
    with store._read() as cur:
        cur.execute(q(f"SELECT (trace_ts / CAST(? AS BIGINT)) * CAST(? AS BIGINT), {by}, {counts} FROM feedback "
                      f"WHERE {cond} GROUP BY 1, 2 ORDER BY 1, 2"), (bucket_s, bucket_s, *args))
        series = cur.fetchall()
        cur.execute(q(f"SELECT {by}, {counts}, COUNT(DISTINCT trace_id) FROM feedback WHERE {cond} "
                      "GROUP BY 1 ORDER BY 2 DESC"), args)
        totals = cur.fetchall()
        cur.execute(q(f"SELECT {by}, kind, COUNT(*) FROM feedback WHERE {cond} GROUP BY 1, 2"), args)
        kinds = cur.fetchall()
        cur.execute(q(f"SELECT {counts}, COUNT(DISTINCT trace_id) FROM feedback WHERE {cond}"), args)
        overall = cur.fetchone()
    by_kind: dict[str, dict[str, int]] = {}
    for g, k, n in kinds:
        by_kind.setdefault(g or UNKNOWN, {})[k] = int(n)
    data = []
    for b, g, n, pos, neg, ssum, sn in series:
        r = _row(g or UNKNOWN, int(n), int(pos or 0), int(neg or 0), ssum, int(sn or 0))
        r["bucket_start"] = int(b)
        data.append(r)
    total_rows = []
    for g, n, pos, neg, ssum, sn, traces in totals:
        r = _row(g or UNKNOWN, int(n), int(pos or 0), int(neg or 0), ssum, int(sn or 0), int(traces))
        r["by_kind"] = by_kind.get(g or UNKNOWN, {})
        total_rows.append(r)
    n, pos, neg, ssum, sn, traces = overall
    summary = _row("all", int(n or 0), int(pos or 0), int(neg or 0), ssum, int(sn or 0), int(traces or 0))
    return {"start": start, "end": end, "bucket_s": bucket_s, "by": by, "source": source, "kind": kind,
            "groups": [r["group"] for r in total_rows], "data": data, "totals": total_rows, "summary": summary,
            "outcomes": outcome_stats(store, start, end, by, service=service)}


def outcome_stats(store: Any, start: float, end: float, by: str, *, service: Any = None) -> list[dict[str, Any]]:
    """Per outcome name and group: count, mean and sum of the values reported in the window,
    each outcome joined to the calls of its session (an outcome counts once in every group
    its session touched)."""
    from .service import FeedbackService

    svc = service or FeedbackService(store)
    q = store.dialect.q
    with store._read() as cur:
        cur.execute(q("SELECT outcome_id, session_id, trace_id, name, value FROM outcomes WHERE created_at >= ? "
                      "AND created_at < ? ORDER BY created_at LIMIT ?"), (start, end, MAX_OUTCOMES))
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    if not rows:
        return []
    dims = svc.outcome_dims(rows)
    acc: dict[tuple[str, str], list[float]] = {}
    sessions: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        groups = dims.get(r["outcome_id"], {}).get(by) or {UNKNOWN}
        for g in groups:
            key = (r["name"], g)
            acc.setdefault(key, []).append(float(r["value"]))
            sessions.setdefault(key, set()).add(r["session_id"] or r["trace_id"] or "")
    out = []
    for (name, g), values in sorted(acc.items()):
        out.append({"name": name, "group": g, "count": len(values), "sessions": len(sessions[(name, g)]),
                    "sum": round(sum(values), 6), "mean": round(sum(values) / len(values), 6)})
    return out
