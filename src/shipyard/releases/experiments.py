"""A/B experiments: deterministic sticky assignment, Thompson sampling, significance.

Assignment hashes ``experiment name + unit id`` (SHA-256, first 64 bits as a fraction of
2^64) onto the cumulative weights, so a user (or session) gets the same variant in every
process and after restarts, with no state. In ``thompson`` mode the weights are each
variant's probability of being the best (Beta posteriors of the success rate, by Monte
Carlo), floored at ``min_weight``; a unit keeps its variant for as long as this process
remembers it (a bounded LRU), and new units follow the shifting weights.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .config import ExperimentConfig

STICKY_MEMORY = 100_000


def unit_fraction(experiment: str, unit: str) -> float:
    digest = hashlib.sha256(f"{experiment}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def pick(names: Sequence[str], weights: Sequence[float], x: float) -> str:
    """The variant whose cumulative weight interval holds ``x`` in [0, 1)."""
    total = sum(weights)
    acc, cum = 0.0, []
    for w in weights:
        acc += w / total
        cum.append(acc)
    i = bisect.bisect_right(cum, x)
    return names[min(i, len(names) - 1)]


def thompson_weights(counts: dict[str, tuple[int, int]], names: Sequence[str], min_weight: float,
                     draws: int = 2000, rng: random.Random | None = None) -> dict[str, float]:
    """P(variant has the highest success rate) under Beta(1 + s, 1 + f), floored at min_weight."""
    rng = rng or random.Random()
    wins = dict.fromkeys(names, 0)
    params = [(n, 1 + counts.get(n, (0, 0))[0], 1 + counts.get(n, (0, 0))[1]) for n in names]
    for _ in range(draws):
        best = max(params, key=lambda p: rng.betavariate(p[1], p[2]))
        wins[best[0]] += 1
    raw = {n: wins[n] / draws for n in names}
    floor = min_weight
    free = 1.0 - floor * len(names)
    return {n: floor + free * raw[n] for n in names}


def outcome_counts(cfg: ExperimentConfig, rs: Any, since: float, until: float) -> dict[str, tuple[int, int]]:
    """variant -> (successes, failures) on the experiment's ``metric``, for Thompson sampling:
    ``success`` counts calls that succeeded; ``evaluator`` counts evaluator verdicts (a score
    without a verdict passes at >= 0.5); ``feedback`` counts feedback events scoring >= 0.5
    (thumbs up, high scores, accepted; neutral events are not counted)."""
    if cfg.metric == "success":
        return rs.success_counts(cfg.name, since)
    if cfg.metric == "evaluator":
        rows: list[tuple[str, bool]] = [(v, passed if passed is not None else score >= 0.5)
                                        for v, score, passed in rs.evaluator_outcomes(cfg.name, since, until)
                                        if passed is not None or score is not None]
    else:
        rows = [(v, score >= 0.5) for v, score in (rs.feedback_outcomes(cfg.name, since, until) or [])]
    out: dict[str, list[int]] = {}
    for variant, ok in rows:
        c = out.setdefault(variant, [0, 0])
        c[0 if ok else 1] += 1
    return {v: (s, f) for v, (s, f) in out.items()}


class Assigner:
    """One experiment's assignment state (weights, the Thompson counters, sticky memory)."""

    def __init__(self, alias: str, cfg: ExperimentConfig) -> None:
        self.alias = alias
        self.cfg = cfg
        self.names = [v.name for v in cfg.variants]
        self.variants = {v.name: v for v in cfg.variants}
        fr = cfg.fractions()
        self.weights = [fr[n] for n in self.names]
        self._lock = threading.Lock()
        self.counts: dict[str, list[int]] = {n: [0, 0] for n in self.names}  # successes, failures (this process)
        self.seed: dict[str, tuple[int, int]] = {}  # from the store
        self._sticky: OrderedDict[str, str] = OrderedDict()
        self._updated = time.monotonic()
        self._updating = False

    def assign(self, unit: str | None) -> tuple[str, bool]:
        """(variant, sticky?). Without a unit id the request itself is the unit."""
        if unit is None:
            return pick(self.names, self.weights, random.random()), False
        if self.cfg.mode == "thompson":
            with self._lock:
                hit = self._sticky.get(unit)
                if hit is not None:
                    self._sticky.move_to_end(unit)
                    return hit, True
            v = pick(self.names, self.weights, unit_fraction(self.cfg.name, unit))
            with self._lock:
                self._sticky[unit] = v
                if len(self._sticky) > STICKY_MEMORY:
                    self._sticky.popitem(last=False)
            return v, True
        return pick(self.names, self.weights, unit_fraction(self.cfg.name, unit)), True

    def observe(self, variant: str, ok: bool) -> None:
        """A finished call (metric ``success`` only: evaluator and feedback outcomes arrive
        later and are read from the store)."""
        if self.cfg.metric != "success":
            return
        c = self.counts.get(variant)
        if c is not None:
            c[0 if ok else 1] += 1

    def due(self) -> bool:
        return (self.cfg.mode == "thompson" and not self._updating
                and time.monotonic() - self._updated > self.cfg.update_interval_s)

    def totals(self) -> dict[str, tuple[int, int]]:
        return {n: (self.counts[n][0] + self.seed.get(n, (0, 0))[0], self.counts[n][1] + self.seed.get(n, (0, 0))[1])
                for n in self.names}

    def update_weights(self) -> dict[str, float]:
        """Recompute Thompson weights (blocking, about a millisecond per 1000 draws)."""
        w = thompson_weights(self.totals(), self.names, self.cfg.min_weight)
        self.weights = [w[n] for n in self.names]
        self._updated = time.monotonic()
        return w

    def current_weights(self) -> dict[str, float]:
        total = sum(self.weights)
        return {n: round(w / total, 4) for n, w in zip(self.names, self.weights)}


# ---- statistics -----------------------------------------------------------------------
def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def two_proportion_z(s1: int, n1: int, s2: int, n2: int) -> dict[str, Any]:
    """Compare rate 2 (a variant) with rate 1 (control): difference, z, two-sided p, 95% CI."""
    if n1 == 0 or n2 == 0:
        return {"diff": None, "z": None, "p_value": None, "ci95": None}
    p1, p2 = s1 / n1, s2 / n2
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (p2 - p1) / se if se > 0 else 0.0
    p = 2 * _norm_sf(abs(z)) if se > 0 else 1.0
    se_u = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    ci = [round(p2 - p1 - 1.96 * se_u, 6), round(p2 - p1 + 1.96 * se_u, 6)]
    return {"diff": round(p2 - p1, 6), "z": round(z, 4), "p_value": round(p, 6), "ci95": ci}


def bootstrap_diff(control: list[float], variant: list[float], resamples: int = 1000,
                   seed: int = 7, cap: int = 5000) -> dict[str, Any]:
    """Mean difference (variant - control) with a 95% percentile bootstrap interval."""
    if not control or not variant:
        return {"diff": None, "ci95": None}
    rng = random.Random(seed)
    a = control if len(control) <= cap else rng.sample(control, cap)
    b = variant if len(variant) <= cap else rng.sample(variant, cap)
    diffs = []
    for _ in range(resamples):
        ma = sum(rng.choices(a, k=len(a))) / len(a)
        mb = sum(rng.choices(b, k=len(b))) / len(b)
        diffs.append(mb - ma)
    diffs.sort()
    lo, hi = diffs[int(0.025 * resamples)], diffs[min(resamples - 1, int(0.975 * resamples))]
    return {"diff": round(sum(b) / len(b) - sum(a) / len(a), 6), "ci95": [round(lo, 6), round(hi, 6)],
            "significant": lo > 0 or hi < 0}


def report(cfg: ExperimentConfig, alias: str, rs: Any, start: float, end: float,
           weights: dict[str, float] | None = None) -> dict[str, Any]:
    """Per variant: exposures, success, latency, cost, evaluator and feedback results, and each
    variant against the control on the experiment's metric."""
    stats = {r["variant"]: r for r in rs.exposure_stats(cfg.name, start, end)}
    evals = rs.evaluator_outcomes(cfg.name, start, end)
    feedback = rs.feedback_outcomes(cfg.name, start, end)
    by_eval: dict[str, list[tuple[float | None, bool | None]]] = {}
    for v, score, passed in evals:
        by_eval.setdefault(v, []).append((score, passed))
    by_fb: dict[str, list[float]] = {}
    for v, score in feedback or []:
        by_fb.setdefault(v, []).append(score)
    variants = []
    for v in cfg.variants:
        st = stats.get(v.name, {})
        n, ok = int(st.get("n") or 0), int(st.get("ok") or 0)
        ev = by_eval.get(v.name, [])
        passes = [p for _, p in ev if p is not None]
        scores = [s for s, _ in ev if s is not None]
        fb = by_fb.get(v.name, [])
        variants.append({
            "name": v.name, "weight": cfg.fractions()[v.name], "runs": v.describe(),
            "current_weight": (weights or {}).get(v.name),
            "exposures": n, "units": int(st.get("units") or 0), "successes": ok,
            "success_rate": round(ok / n, 6) if n else None,
            "latency_ms": st.get("latency_ms"), "cost_usd": st.get("cost_usd") if st.get("cost_n") else None,
            "evaluator": {"n": len(ev), "passed": sum(1 for p in passes if p), "judged": len(passes),
                          "pass_rate": round(sum(1 for p in passes if p) / len(passes), 6) if passes else None,
                          "mean_score": round(sum(scores) / len(scores), 6) if scores else None},
            "feedback": None if feedback is None else {
                "n": len(fb), "mean": round(sum(fb) / len(fb), 6) if fb else None},
        })
    control = next(x for x in variants if x["name"] == cfg.control_name)
    comparisons = []
    for x in variants:
        if x is control:
            continue
        cmp: dict[str, Any] = {"variant": x["name"], "control": control["name"], "metric": cfg.metric}
        if cfg.metric == "success":
            cmp.update(test="two-proportion z", **two_proportion_z(control["successes"], control["exposures"],
                                                                   x["successes"], x["exposures"]))
        elif cfg.metric == "evaluator":
            c, e = control["evaluator"], x["evaluator"]
            if c["judged"] and e["judged"]:
                cmp.update(test="two-proportion z", **two_proportion_z(c["passed"], c["judged"], e["passed"],
                                                                       e["judged"]))
            else:
                cs = [s for s, _ in by_eval.get(control["name"], []) if s is not None]
                vs = [s for s, _ in by_eval.get(x["name"], []) if s is not None]
                cmp.update(test="bootstrap (mean evaluator score)", **bootstrap_diff(cs, vs))
        else:
            if feedback is None:
                cmp.update(test=None, note="no feedback table in this store yet")
            else:
                cmp.update(test="bootstrap (mean feedback)", **bootstrap_diff(by_fb.get(control["name"], []),
                                                                              by_fb.get(x["name"], [])))
        if cmp.get("p_value") is not None:
            cmp["significant"] = cmp["p_value"] < 0.05
        if cmp.get("significant") and cmp.get("diff") is not None:
            cmp["verdict"] = "better" if cmp["diff"] > 0 else "worse"
        elif cmp.get("diff") is not None:
            cmp["verdict"] = "no significant difference"
        comparisons.append(cmp)
    return {"experiment": cfg.name, "alias": alias, "mode": cfg.mode, "unit": cfg.unit, "metric": cfg.metric,
            "window": {"start": start, "end": end}, "variants": variants, "comparisons": comparisons,
            "feedback_available": feedback is not None}
