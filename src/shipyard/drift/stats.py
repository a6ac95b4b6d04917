"""Statistical tests, chosen by sample size, each with its threshold and verdict.

- numeric, small samples (the smaller side <= ``small_sample_max``): two-sample
  Kolmogorov-Smirnov; drift when p < ``p_value`` / m (Bonferroni over the m tests run)
- numeric, large samples: Wasserstein distance divided by the reference's standard
  deviation; drift when > ``wasserstein``
- categorical, small: chi-squared test of the 2 x k contingency table; drift as for KS
- categorical, large: Jensen-Shannon distance (base 2) of the category shares; drift when
  > ``jensen_shannon``

Either side with fewer than ``min_samples`` values gets the verdict "not enough data" and
no statistic. p-values only make sense for small samples: with 100,000 records every tiny
difference is "significant", so large samples are judged by effect size instead.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

DRIFT = "drift"
NO_DRIFT = "no drift"
NOT_ENOUGH = "not enough data"
NO_DATA = "no data"
HIST_BINS = 24
MAX_CATEGORIES_SHOWN = 8


def _f(x: float | None, nd: int = 6) -> float | None:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return round(float(x), nd)


def not_enough(n_ref: int, n_cur: int, min_samples: int) -> str | None:
    if n_ref < min_samples or n_cur < min_samples:
        which = " and ".join(w for w, n in (("reference", n_ref), ("current", n_cur)) if n < min_samples)
        return (f"not enough data: {n_ref} reference and {n_cur} current values; at least {min_samples} "
                f"are needed in each ({which} too small)")
    return None


def numeric_summary(x: np.ndarray) -> dict[str, Any]:
    if not len(x):
        return {"n": 0}
    q = np.quantile(x, [0.05, 0.5, 0.95])
    return {"n": int(len(x)), "mean": _f(x.mean()), "std": _f(x.std()), "p05": _f(q[0]), "p50": _f(q[1]),
            "p95": _f(q[2])}


def histogram(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any] | None:
    """Shared bins over the 1st..99th percentile of both sides, as shares (for plots)."""
    both = np.concatenate([ref, cur])
    if not len(both):
        return None
    lo, hi = (float(v) for v in np.quantile(both, [0.01, 0.99]))
    if hi <= lo:
        lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, HIST_BINS + 1)

    def shares(x: np.ndarray) -> list[float]:
        if not len(x):
            return [0.0] * HIST_BINS
        h, _ = np.histogram(np.clip(x, lo, hi), bins=edges)
        return [round(v, 5) for v in (h / len(x)).tolist()]

    return {"edges": [float(f"{e:.6g}") for e in edges.tolist()], "reference": shares(ref), "current": shares(cur)}


def compare_numeric(name: str, side: str, ref: Sequence[float], cur: Sequence[float],
                    th: dict[str, float]) -> dict[str, Any]:
    r = np.asarray(ref, dtype=float)
    c = np.asarray(cur, dtype=float)
    out: dict[str, Any] = {"name": name, "side": side, "kind": "numeric", "n_reference": int(len(r)),
                           "n_current": int(len(c)), "reference": numeric_summary(r),
                           "current": numeric_summary(c), "test": None, "statistic": None, "p_value": None,
                           "threshold": None}
    reason = not_enough(len(r), len(c), int(th["min_samples"]))
    if reason:
        out.update(verdict=NOT_ENOUGH, reason=reason)
        return out
    out["hist"] = histogram(r, c)
    if min(len(r), len(c)) <= th["small_sample_max"]:
        from scipy.stats import ks_2samp

        res = ks_2samp(r, c)
        out.update(test="ks", statistic=_f(res.statistic), p_value=_f(res.pvalue, 10))
    else:
        from scipy.stats import wasserstein_distance

        sd = float(r.std())
        scale = sd if sd > 0 else (abs(float(r.mean())) or 1.0)
        out.update(test="wasserstein", statistic=_f(wasserstein_distance(r, c) / scale),
                   threshold=th["wasserstein"])
        out["verdict"] = DRIFT if out["statistic"] > th["wasserstein"] else NO_DRIFT
    return out


def compare_categorical(name: str, side: str, ref: Sequence[str], cur: Sequence[str],
                        th: dict[str, float]) -> dict[str, Any]:
    from collections import Counter

    return compare_counts(name, side, Counter(ref), Counter(cur), th)


def compare_counts(name: str, side: str, rc: Mapping[str, int], cc: Mapping[str, int],
                   th: dict[str, float]) -> dict[str, Any]:
    """As compare_categorical, from counts per category."""
    rc = {k: int(v) for k, v in rc.items() if v}
    cc = {k: int(v) for k, v in cc.items() if v}
    n_r, n_c = sum(rc.values()), sum(cc.values())
    cats = sorted(set(rc) | set(cc), key=lambda k: (-(rc.get(k, 0) + cc.get(k, 0)), k))
    shares = {k: {"reference": _f(rc.get(k, 0) / n_r if n_r else 0.0, 5), "current": _f(cc.get(k, 0) / n_c if n_c else 0.0, 5)}
              for k in cats}
    out: dict[str, Any] = {"name": name, "side": side, "kind": "categorical", "n_reference": n_r,
                           "n_current": n_c, "shares": shares, "test": None, "statistic": None,
                           "p_value": None, "threshold": None}
    reason = not_enough(n_r, n_c, int(th["min_samples"]))
    if reason:
        out.update(verdict=NOT_ENOUGH, reason=reason)
        return out
    if min(n_r, n_c) <= th["small_sample_max"]:
        if len(cats) < 2:
            out.update(test="chi2", statistic=0.0, p_value=1.0)
        else:
            from scipy.stats import chi2_contingency

            table = np.array([[rc.get(k, 0) for k in cats], [cc.get(k, 0) for k in cats]], dtype=float)
            res = chi2_contingency(table)
            out.update(test="chi2", statistic=_f(res.statistic), p_value=_f(res.pvalue, 10))
    else:
        from scipy.spatial.distance import jensenshannon

        p = np.array([rc.get(k, 0) for k in cats], dtype=float) / n_r
        q = np.array([cc.get(k, 0) for k in cats], dtype=float) / n_c
        js = float(jensenshannon(p, q, base=2)) if len(cats) > 1 else 0.0
        out.update(test="jensen_shannon", statistic=_f(js if math.isfinite(js) else 0.0),
                   threshold=th["jensen_shannon"])
        out["verdict"] = DRIFT if out["statistic"] > th["jensen_shannon"] else NO_DRIFT
    return out


def apply_p_values(checks: list[dict[str, Any]], th: dict[str, float]) -> None:
    """Verdicts of the p-value tests (KS, chi-squared): Bonferroni over those run."""
    tested = [c for c in checks if c.get("test") in ("ks", "chi2")]
    if not tested:
        return
    limit = th["p_value"] / len(tested)
    for c in tested:
        c["threshold"] = _f(limit, 10)
        c["verdict"] = DRIFT if c["p_value"] < limit else NO_DRIFT


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value that two shares are equal (pooled z-test)."""
    if not n1 or not n2:
        return 1.0
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if k1 / n1 == k2 / n2 else 0.0
    z = abs(k1 / n1 - k2 / n2) / se
    return math.erfc(z / math.sqrt(2))
