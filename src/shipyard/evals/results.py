"""Eval runs and their results in the store: batched writes, and aggregates computed by
SQL (or by streaming a cursor), so a report never holds one row per case in memory.

A case is one (run, variant, case id, repeat): the resume key. Its row holds the case's
verdict (``passed``: 1, 0, or NULL when undecided), its score (mean of its evaluators'
scores), the answer, the call's measurements and the trace id; each evaluator adds a
row to ``eval_scores`` linked to the same trace.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import NotFound
from . import stats
from .schema import ensure_schema

CASE_COLUMNS = ("run_id", "variant", "case_id", "rep", "status", "passed", "score", "output", "error", "trace_id",
                "model", "latency_ms", "cost_usd", "input_tokens", "output_tokens", "created_at")
SCORE_COLUMNS = ("run_id", "variant", "case_id", "rep", "evaluator", "criterion", "passed", "score", "errored",
                 "reason", "error", "trace_id", "cost_usd")
MAX_OUTPUT = 100_000
MAX_REASON = 2_000


@dataclass(slots=True)
class ScoreRow:
    evaluator: str
    criterion: str
    passed: bool | None
    score: float | None
    reason: str | None
    error: str | None
    cost_usd: float | None = None


@dataclass(slots=True)
class CaseResult:
    run_id: str
    variant: str
    case_id: str
    rep: int
    status: str  # ok | eval_error | error
    passed: bool | None = None
    score: float | None = None
    output: str | None = None
    error: str | None = None
    trace_id: str | None = None
    model: str | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    created_at: float = field(default_factory=time.time)
    scores: list[ScoreRow] = field(default_factory=list)

    def row(self) -> tuple:
        out = self.output if self.output is None or len(self.output) <= MAX_OUTPUT else self.output[:MAX_OUTPUT]
        return (self.run_id, self.variant, self.case_id, self.rep, self.status, _b(self.passed), self.score, out,
                self.error, self.trace_id, self.model, self.latency_ms, self.cost_usd, self.input_tokens,
                self.output_tokens, self.created_at)


def _b(v: bool | None) -> int | None:
    return None if v is None else int(bool(v))


def _clip(s: str | None, n: int = MAX_REASON) -> str | None:
    return s if s is None or len(s) <= n else s[:n] + "…"


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _i(v: Any) -> int:
    return 0 if v is None else int(v)


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


class EvalStore:
    def __init__(self, store: Any) -> None:
        self.store = store
        ensure_schema(store)
        self.q = store.dialect.q
        self._insert_case = self.q(
            f"INSERT INTO eval_results ({', '.join(CASE_COLUMNS)}) VALUES ({_placeholders(len(CASE_COLUMNS))}) "
            "ON CONFLICT (run_id, variant, case_id, rep) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in CASE_COLUMNS[4:]))
        self._insert_score = self.q(
            f"INSERT INTO eval_scores ({', '.join(SCORE_COLUMNS)}) VALUES ({_placeholders(len(SCORE_COLUMNS))}) "
            "ON CONFLICT (run_id, variant, case_id, rep, evaluator) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in SCORE_COLUMNS[5:]))

    # ---- runs ----------------------------------------------------------------------------
    def create_run(self, run_id: str, *, name: str, kind: str, spec: dict[str, Any], spec_path: str | None,
                   dataset: str | None, dataset_version: int | None, split: str | None, repeats: int,
                   total: int | None, variants: list[dict[str, Any]]) -> None:
        with self.store._write() as cur:
            cur.execute(self.q(
                "INSERT INTO eval_runs (run_id, name, kind, status, created_at, dataset, dataset_version, split, "
                "repeats, total, spec, spec_path) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)"),
                (run_id, name, kind, time.time(), dataset, dataset_version, split, repeats, total,
                 json.dumps(spec, default=str), spec_path))
            cur.executemany(self.q(
                "INSERT INTO eval_variants (run_id, variant, position, prompt, model, params) VALUES (?, ?, ?, ?, ?, ?)"),
                [(run_id, v["name"], i, v.get("prompt"), v.get("model"), json.dumps(v.get("params") or {}))
                 for i, v in enumerate(variants)])

    def set_status(self, run_id: str, status: str) -> None:
        with self.store._write() as cur:
            cur.execute(self.q("UPDATE eval_runs SET status = ?, finished_at = ? WHERE run_id = ?"),
                        (status, time.time() if status != "running" else None, run_id))

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self.store._read() as cur:
            cur.execute(self.q("SELECT run_id, name, kind, status, created_at, finished_at, dataset, dataset_version, "
                               "split, repeats, total, spec, spec_path FROM eval_runs WHERE run_id = ?"), (run_id,))
            cols = [d[0] for d in cur.description]
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"eval run {run_id!r} not found", param="run_id", code="eval_run_not_found")
        d = dict(zip(cols, row))
        d["spec"] = json.loads(d["spec"])
        return d

    def list_runs(self, limit: int = 20, name: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE name = ? ", [name]) if name else ("", [])
        with self.store._read() as cur:
            cur.execute(self.q(
                "SELECT run_id, name, kind, status, created_at, finished_at, dataset, dataset_version, split, "
                f"repeats, total FROM eval_runs {where}ORDER BY created_at DESC LIMIT ?"), (*args, limit))
            cols = [d[0] for d in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
            for r in rows:
                cur.execute(self.q("SELECT COUNT(*) FROM eval_results WHERE run_id = ?"), (r["run_id"],))
                r["done"] = int(cur.fetchone()[0])
        return rows

    def variants(self, run_id: str) -> list[dict[str, Any]]:
        with self.store._read() as cur:
            cur.execute(self.q("SELECT variant, prompt, model, params FROM eval_variants WHERE run_id = ? "
                               "ORDER BY position"), (run_id,))
            return [{"name": v, "prompt": p, "model": m, "params": json.loads(pa or "{}")}
                    for v, p, m, pa in cur.fetchall()]

    # ---- results -------------------------------------------------------------------------
    def done_keys(self, run_id: str, case_ids: list[str], *, retry_errors: bool = False) -> set[tuple[str, str, int]]:
        """The (variant, case id, repeat) already recorded for these cases."""
        if not case_ids:
            return set()
        cond = " AND status <> 'error'" if retry_errors else ""
        out: set[tuple[str, str, int]] = set()
        with self.store._read() as cur:
            for k in range(0, len(case_ids), 400):
                chunk = case_ids[k:k + 400]
                cur.execute(self.q(f"SELECT variant, case_id, rep FROM eval_results WHERE run_id = ? "
                                   f"AND case_id IN ({_placeholders(len(chunk))}){cond}"), (run_id, *chunk))
                out.update((v, c, int(r)) for v, c, r in cur.fetchall())
        return out

    def count_done(self, run_id: str) -> int:
        with self.store._read() as cur:
            cur.execute(self.q("SELECT COUNT(*) FROM eval_results WHERE run_id = ?"), (run_id,))
            return int(cur.fetchone()[0])

    def write_results(self, results: list[CaseResult]) -> None:
        if not results:
            return
        scores = [(r.run_id, r.variant, r.case_id, r.rep, s.evaluator, s.criterion, _b(s.passed), s.score,
                   int(s.error is not None), _clip(s.reason), _clip(s.error), r.trace_id, s.cost_usd)
                  for r in results for s in r.scores]
        with self.store._write() as cur:
            cur.executemany(self._insert_case, [r.row() for r in results])
            if scores:
                cur.executemany(self._insert_score, scores)

    def write_pairwise(self, rows: list[tuple]) -> None:
        """(run_id, evaluator, variant_a, variant_b, case_id, rep, winner, reason, error) rows."""
        if not rows:
            return
        with self.store._write() as cur:
            cur.executemany(self.q(
                "INSERT INTO eval_pairwise (run_id, evaluator, variant_a, variant_b, case_id, rep, winner, reason, "
                "error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, evaluator, variant_a, variant_b, "
                "case_id, rep) DO UPDATE SET winner = excluded.winner, reason = excluded.reason, "
                "error = excluded.error"), rows)

    def pairwise_todo(self, run_id: str, evaluator: str, va: str, vb: str, after: tuple[str, int] | None,
                      limit: int = 200) -> list[tuple[str, int, str, str, str | None]]:
        """Cases both variants answered and this pairwise evaluator has not compared yet:
        (case id, repeat, answer a, answer b, trace id of b), in key order after ``after``."""
        cond, args = "", []
        if after is not None:
            cond = " AND (a.case_id > ? OR (a.case_id = ? AND a.rep > ?))"
            args = [after[0], after[0], after[1]]
        with self.store._read() as cur:
            cur.execute(self.q(
                "SELECT a.case_id, a.rep, a.output, b.output, b.trace_id FROM eval_results a JOIN eval_results b "
                "ON b.run_id = a.run_id AND b.case_id = a.case_id AND b.rep = a.rep AND b.variant = ? "
                "WHERE a.run_id = ? AND a.variant = ? AND a.status <> 'error' AND b.status <> 'error'"
                f"{cond} AND NOT EXISTS (SELECT 1 FROM eval_pairwise p WHERE p.run_id = a.run_id AND "
                "p.evaluator = ? AND p.variant_a = a.variant AND p.variant_b = b.variant AND p.case_id = a.case_id "
                "AND p.rep = a.rep) ORDER BY a.case_id, a.rep LIMIT ?"),
                (vb, run_id, va, *args, evaluator, limit))
            return [(c, int(r), oa or "", ob or "", t) for c, r, oa, ob, t in cur.fetchall()]

    def iter_cases(self, run_id: str, variant: str, page: int = 500) -> Iterator[dict[str, Any]]:
        """Every case row of one variant, in (case id, repeat) order, a page at a time."""
        cols = ", ".join(CASE_COLUMNS[2:])
        last: tuple[str, int] | None = None
        while True:
            cond, args = "", []
            if last is not None:
                cond, args = " AND (case_id > ? OR (case_id = ? AND rep > ?))", [last[0], last[0], last[1]]
            with self.store._read() as cur:
                cur.execute(self.q(f"SELECT {cols} FROM eval_results WHERE run_id = ? AND variant = ?{cond} "
                                   "ORDER BY case_id, rep LIMIT ?"), (run_id, variant, *args, page))
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r)) for r in cur.fetchall()]
            yield from rows
            if len(rows) < page:
                return
            last = (rows[-1]["case_id"], rows[-1]["rep"])

    def case_scores(self, run_id: str, variant: str, case_id: str, rep: int = 0) -> list[dict[str, Any]]:
        with self.store._read() as cur:
            cur.execute(self.q("SELECT evaluator, criterion, passed, score, reason, error FROM eval_scores "
                               "WHERE run_id = ? AND variant = ? AND case_id = ? AND rep = ? ORDER BY evaluator"),
                        (run_id, variant, case_id, rep))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def backfill_costs(self, run_id: str) -> int:
        """Fill unknown costs (and models) from the recorded spans: a remote gateway does not
        return the cost, but records it; when it records into this same store, the case's
        first llm span (its own call; judges' calls come after) has it."""
        first = ("(SELECT {col} FROM spans s WHERE s.trace_id = eval_results.trace_id AND s.kind = 'llm' "
                 "ORDER BY s.start_time LIMIT 1)")
        try:
            with self.store._write() as cur:
                cur.execute(self.q(
                    f"UPDATE eval_results SET cost_usd = {first.format(col='s.cost_usd')}, "
                    f"model = COALESCE(model, {first.format(col='COALESCE(s.response_model, s.model)')}) "
                    "WHERE run_id = ? AND cost_usd IS NULL AND trace_id IS NOT NULL AND status <> 'error'"), (run_id,))
                return max(cur.rowcount, 0)
        except Exception:  # no spans table here: costs stay unknown
            return 0

    # ---- aggregates ----------------------------------------------------------------------
    def summary(self, run_id: str, *, ci: str = "t") -> dict[str, Any]:
        run = self.get_run(run_id)
        variants = self.variants(run_id)
        q = self.q
        per: dict[str, dict[str, Any]] = {}
        with self.store._read() as cur:
            cur.execute(q(  # walks eval_results_agg in group order
                "SELECT variant, COUNT(*), SUM(CASE WHEN passed = 1 THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN passed = 0 THEN 1 ELSE 0 END), SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN status = 'eval_error' THEN 1 ELSE 0 END), COUNT(score), SUM(score), "
                "SUM(score * score), COUNT(cost_usd), SUM(cost_usd), COUNT(latency_ms), AVG(latency_ms), "
                "SUM(input_tokens), SUM(output_tokens) FROM eval_results WHERE run_id = ? GROUP BY variant"), (run_id,))
            for (v, n, p, f, e, ee, sn, ss, sss, cn, cs, ln, lavg, tin, tout) in cur.fetchall():
                n, p, f = int(n), _i(p), _i(f)
                sn = int(sn)
                decided = p + f
                mean = _f(ss) / sn if sn else None
                sci = stats.t_interval(sn, _f(ss) or 0.0, _f(sss) or 0.0)
                per[v] = {
                    "variant": v, "n": n, "passed": p, "failed": f, "errors": _i(e), "eval_errors": _i(ee),
                    "decided": decided, "pass_rate": p / decided if decided else None,
                    "pass_ci": stats.wilson(p, decided), "score_n": sn, "score": mean, "score_ci": sci,
                    "cost_known": int(cn), "cost_usd": _f(cs), "cost_per_case": _f(cs) / int(cn) if cn else None,
                    "latency_n": int(ln), "latency_mean": _f(lavg), "input_tokens": _i(tin),
                    "output_tokens": _i(tout),
                }
            for v, d in per.items():
                d["latency_p50"] = self._latency_at(cur, run_id, v, d["latency_n"], 0.50)
                d["latency_p95"] = self._latency_at(cur, run_id, v, d["latency_n"], 0.95)
            cur.execute(q(
                "SELECT variant, evaluator, COUNT(*), SUM(CASE WHEN passed = 1 THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN passed = 0 THEN 1 ELSE 0 END), SUM(errored), "
                "COUNT(score), SUM(score), SUM(score * score), SUM(cost_usd) FROM eval_scores WHERE run_id = ? "
                "GROUP BY variant, evaluator ORDER BY variant, evaluator"), (run_id,))
            evaluators = []
            criteria = {}
            for ev in (run["spec"].get("spec") or {}).get("evaluators") or []:
                if isinstance(ev, dict):
                    name = ev.get("name") or ev.get("type")
                    criteria[name] = ev.get("criterion") or name
            for v, ev, n, p, f, e, sn, ss, sss, cost in cur.fetchall():
                crit = criteria.get(ev, ev)
                p, f, sn = _i(p), _i(f), int(sn)
                evaluators.append({
                    "variant": v, "evaluator": ev, "criterion": crit, "n": int(n), "passed": p, "failed": f,
                    "errors": _i(e), "pass_rate": p / (p + f) if p + f else None, "pass_ci": stats.wilson(p, p + f),
                    "score": _f(ss) / sn if sn else None, "score_ci": stats.t_interval(sn, _f(ss) or 0.0, _f(sss) or 0.0),
                    "cost_usd": _f(cost)})
            cur.execute(q(
                "SELECT evaluator, variant_a, variant_b, COUNT(*), SUM(CASE WHEN winner = 'a' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN winner = 'b' THEN 1 ELSE 0 END), SUM(CASE WHEN winner = 'tie' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END) FROM eval_pairwise WHERE run_id = ? "
                "GROUP BY evaluator, variant_a, variant_b ORDER BY evaluator, variant_a, variant_b"), (run_id,))
            pairwise = []
            for ev, a, b, n, aw, bw, t, e in cur.fetchall():
                aw, bw, t = _i(aw), _i(bw), _i(t)
                decided = aw + bw + t
                # a tie counts half: the win rate of b over a
                pairwise.append({"evaluator": ev, "a": a, "b": b, "n": int(n), "a_wins": aw, "b_wins": bw,
                                 "ties": t, "errors": _i(e),
                                 "b_win_rate": (bw + t / 2) / decided if decided else None,
                                 "b_win_ci": stats.wilson(round(bw + t / 2), decided)})
        if ci == "bootstrap":
            for v, d in per.items():
                if 2 <= d["score_n"] <= 50_000:
                    d["score_ci"] = stats.bootstrap_interval(self._scores(run_id, v))
        repeats = self.repeat_stats(run_id, int(run["repeats"])) if int(run["repeats"]) > 1 else {}
        ordered = [per[v["name"]] if v["name"] in per else _empty(v["name"]) for v in variants]
        for row, v in zip(ordered, variants):
            row["model"], row["prompt"], row["params"] = v["model"], v["prompt"], v["params"]
            row["repeats"] = repeats.get(v["name"])
        return {"run": run, "variants": ordered, "evaluators": evaluators, "pairwise": pairwise, "ci": ci}

    def _latency_at(self, cur: Any, run_id: str, variant: str, n: int, qtile: float) -> float | None:
        if not n:
            return None
        cur.execute(self.q("SELECT latency_ms FROM eval_results WHERE run_id = ? AND variant = ? AND latency_ms IS "
                           "NOT NULL ORDER BY latency_ms LIMIT 1 OFFSET ?"), (run_id, variant, stats.rank_index(n, qtile)))
        row = cur.fetchone()
        return _f(row[0]) if row else None

    def _scores(self, run_id: str, variant: str) -> list[float]:
        with self.store._read() as cur:
            cur.execute(self.q("SELECT score FROM eval_results WHERE run_id = ? AND variant = ? AND score IS NOT NULL"),
                        (run_id, variant))
            return [float(r[0]) for r in cur.fetchall()]

    def repeat_stats(self, run_id: str, repeats: int) -> dict[str, dict[str, Any]]:
        """Nondeterminism per variant over cases run ``repeats`` times: the share of cases
        whose verdict flipped between repeats, pass@k (unbiased, k = 1..repeats), pass^k
        (every repeat passed) and the mean within-case variance of the score."""
        acc: dict[str, dict[str, Any]] = {}
        with self.store._read() as cur:
            cur.execute(self.q(
                "SELECT variant, SUM(CASE WHEN passed = 1 THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN passed IS NOT NULL THEN 1 ELSE 0 END), COUNT(score), SUM(score), SUM(score * score) "
                "FROM eval_results WHERE run_id = ? GROUP BY variant, case_id"), (run_id,))
            while True:
                rows = cur.fetchmany(1000)
                if not rows:
                    break
                for v, p, d, sn, ss, sss in rows:
                    a = acc.setdefault(v, {"cases": 0, "flipped": 0, "pass_at": [0.0] * repeats, "pass_all": 0,
                                           "full": 0, "var": stats.Moments()})
                    p, d, sn = _i(p), _i(d), int(sn)
                    a["cases"] += 1
                    if d >= 2 and 0 < p < d:
                        a["flipped"] += 1
                    if d >= 1:
                        a["full"] += 1
                        for k in range(1, min(d, repeats) + 1):
                            a["pass_at"][k - 1] += stats.pass_at_k(d, p, k)
                        a["pass_all"] += p == d
                    if sn >= 2:
                        var = max(0.0, (_f(sss) - _f(ss) ** 2 / sn) / (sn - 1))
                        a["var"].add(var)
        out = {}
        for v, a in acc.items():
            full = a["full"]
            out[v] = {"cases": a["cases"], "repeats": repeats, "flip_rate": a["flipped"] / full if full else None,
                      "flipped": a["flipped"],
                      "pass_at": {k + 1: (x / full if full else None) for k, x in enumerate(a["pass_at"])},
                      "pass_all": a["pass_all"] / full if full else None,
                      "score_variance": a["var"].mean}
        return out

    def diff(self, base_run: str, base_variant: str, run: str, variant: str, *, limit: int = 50) -> dict[str, Any]:
        """Cases whose (majority) verdict differs between two (run, variant)s."""
        sub = ("SELECT case_id, SUM(CASE WHEN passed = 1 THEN 1 ELSE 0 END) AS p, "
               "SUM(CASE WHEN passed IS NOT NULL THEN 1 ELSE 0 END) AS d, MIN(output) AS o "
               "FROM eval_results WHERE run_id = ? AND variant = ? GROUP BY case_id")
        regressions: list[dict[str, Any]] = []
        fixes: list[dict[str, Any]] = []
        n_reg = n_fix = both = 0
        with self.store._read() as cur:
            cur.execute(self.q(f"SELECT b.case_id, b.p, b.d, c.p, c.d, b.o, c.o FROM ({sub}) b JOIN ({sub}) c "
                               "ON c.case_id = b.case_id ORDER BY b.case_id"),
                        (base_run, base_variant, run, variant))
            while True:
                rows = cur.fetchmany(1000)
                if not rows:
                    break
                for case_id, bp, bd, cp, cd, bo, co in rows:
                    bp, bd, cp, cd = _i(bp), _i(bd), _i(cp), _i(cd)
                    if not bd or not cd:
                        continue
                    both += 1
                    was, now = bp * 2 > bd, cp * 2 > cd
                    if was == now:
                        continue
                    entry = {"case_id": case_id, "before": bp / bd, "after": cp / cd,
                             "before_output": bo, "after_output": co}
                    if was:
                        n_reg += 1
                        if len(regressions) < limit:
                            regressions.append(entry)
                    else:
                        n_fix += 1
                        if len(fixes) < limit:
                            fixes.append(entry)
        return {"base_run": base_run, "base_variant": base_variant, "run": run, "variant": variant,
                "compared": both, "regressions": n_reg, "fixes": n_fix, "regressed": regressions, "fixed": fixes,
                "mcnemar_p": stats.mcnemar_p(n_reg, n_fix)}


def _empty(name: str) -> dict[str, Any]:
    return {"variant": name, "n": 0, "passed": 0, "failed": 0, "errors": 0, "eval_errors": 0, "decided": 0,
            "pass_rate": None, "pass_ci": None, "score_n": 0, "score": None, "score_ci": None, "cost_known": 0,
            "cost_usd": None, "cost_per_case": None, "latency_n": 0, "latency_mean": None, "latency_p50": None,
            "latency_p95": None, "input_tokens": 0, "output_tokens": 0}
