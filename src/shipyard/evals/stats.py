"""Small, dependency-light statistics for eval reports.

Rates get Wilson score intervals (good at 0 %, 100 % and small n); means get Student-t
intervals from running sums (so a report never loads every score), or a percentile
bootstrap when the scores are at hand. Paired pass/fail comparisons use McNemar's exact
test; judge agreement uses Cohen's kappa and EvalGen's coverage / false-failure rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

Z95 = 1.959963984540054
# two-sided 95 % Student-t quantiles for 1..30 degrees of freedom
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """95 % Wilson score interval for a proportion; None when n == 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def t_quantile(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        return math.inf
    if df <= len(_T95):
        return _T95[df - 1]
    z = Z95  # Cornish-Fisher expansion: accurate to 1e-4 beyond 30 degrees of freedom
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(slots=True)
class Moments:
    """Running count, sum and sum of squares: a mean and its t interval in O(1) memory."""

    n: int = 0
    s: float = 0.0
    ss: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.s += x
        self.ss += x * x

    @property
    def mean(self) -> float | None:
        return self.s / self.n if self.n else None

    @property
    def variance(self) -> float | None:
        """Sample variance (n - 1)."""
        if self.n < 2:
            return None
        return max(0.0, (self.ss - self.s * self.s / self.n) / (self.n - 1))

    def t_interval(self) -> tuple[float, float] | None:
        return t_interval(self.n, self.s, self.ss)


def t_interval(n: int, s: float, ss: float) -> tuple[float, float] | None:
    """95 % t interval for a mean from count, sum and sum of squares."""
    if n < 2:
        return None
    mean = s / n
    var = max(0.0, (ss - s * s / n) / (n - 1))
    half = t_quantile(n - 1) * math.sqrt(var / n)
    return mean - half, mean + half


def bootstrap_interval(values: Sequence[float], iterations: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap 95 % interval for a mean (numpy; deterministic seed)."""
    import numpy as np

    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    arr = np.asarray(values, dtype=float)
    means = np.empty(iterations)
    for i in range(0, iterations, 200):  # in slabs: bounded memory for large n
        k = min(200, iterations - i)
        means[i:i + k] = arr[rng.integers(0, len(arr), size=(k, len(arr)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one case: n samples of which c passed (Chen et al., 2021)."""
    if k > n:
        raise ValueError("k must be at most n")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mcnemar_p(regressions: int, fixes: int) -> float | None:
    """Two-sided exact McNemar test on discordant pairs (pass->fail vs fail->pass)."""
    n = regressions + fixes
    if n == 0:
        return None
    k = min(regressions, fixes)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True, slots=True)
class Agreement:
    """A judge against human labels (pass = positive). EvalGen (Shankar et al., 2024):
    coverage = share of human-failed outputs the judge fails; false-failure rate = share
    of human-passed outputs the judge fails; alignment = their harmonic mean (of
    coverage and 1 - FFR)."""

    n: int
    tp: int  # both pass
    tn: int  # both fail
    fp: int  # judge pass, human fail
    fn: int  # judge fail, human pass

    @property
    def agreement(self) -> float | None:
        return (self.tp + self.tn) / self.n if self.n else None

    @property
    def kappa(self) -> float | None:
        if not self.n:
            return None
        po = (self.tp + self.tn) / self.n
        judge_pass = (self.tp + self.fp) / self.n
        human_pass = (self.tp + self.fn) / self.n
        pe = judge_pass * human_pass + (1 - judge_pass) * (1 - human_pass)
        if pe >= 1:
            return 1.0 if po >= 1 else None
        return (po - pe) / (1 - pe)

    @property
    def tpr(self) -> float | None:
        d = self.tp + self.fn
        return self.tp / d if d else None

    @property
    def tnr(self) -> float | None:
        d = self.tn + self.fp
        return self.tn / d if d else None

    @property
    def coverage(self) -> float | None:
        return self.tnr

    @property
    def false_failure_rate(self) -> float | None:
        tpr = self.tpr
        return None if tpr is None else 1 - tpr

    @property
    def alignment(self) -> float | None:
        cov, ffr = self.coverage, self.false_failure_rate
        if cov is None and ffr is None:
            return None
        # one class absent: alignment is what can be measured
        if cov is None:
            return 1 - ffr  # type: ignore[operator]
        if ffr is None:
            return cov
        good = 1 - ffr
        return 0.0 if cov + good == 0 else 2 * cov * good / (cov + good)


def agreement(pairs: Sequence[tuple[bool, bool]]) -> Agreement:
    """From (human_pass, judge_pass) pairs."""
    tp = tn = fp = fn = 0
    for human, judge in pairs:
        if human and judge:
            tp += 1
        elif not human and not judge:
            tn += 1
        elif judge:
            fp += 1
        else:
            fn += 1
    return Agreement(len(pairs), tp, tn, fp, fn)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already-sorted values (q in [0, 1])."""
    if not sorted_values:
        return None
    i = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def rank_index(n: int, q: float) -> int:
    """The 0-based index of the nearest-rank q-percentile among n sorted values."""
    return max(0, min(n - 1, math.ceil(q * n) - 1))
