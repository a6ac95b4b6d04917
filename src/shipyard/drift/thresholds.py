"""Drift thresholds: their names, defaults and meaning. No heavy imports (config.py
validates ``drift.thresholds`` keys against this table)."""

from __future__ import annotations

from typing import Any, Mapping

# name -> (default, meaning)
THRESHOLDS: dict[str, tuple[float, str]] = {
    "min_samples": (30, "fewer records than this in either window: 'not enough data', no statistic"),
    "small_sample_max": (1000, "up to this many records (the smaller window): KS / chi-squared tests; "
                               "above: Wasserstein / Jensen-Shannon distances"),
    "p_value": (0.05, "KS / chi-squared: drift when p < p_value / number of tests (Bonferroni)"),
    "wasserstein": (0.1, "Wasserstein distance in units of the reference's standard deviation"),
    "jensen_shannon": (0.1, "Jensen-Shannon distance (base 2, 0..1) between category shares"),
    "domain_auc": (0.6, "semantic: cross-validated ROC AUC of a reference-vs-current classifier"),
    "cluster_share": (0.05, "topics: a cluster whose share grew by at least this much (absolute) "
                            "and significantly is listed as grown (new: absent from the reference)"),
    "new_topic_share": (0.02, "topics: drift when topics absent from the reference (at most 1% of it falls "
                              "in them) hold at least this share of the current window together"),
    "nondeterminism": (0.5, "probe: share of re-run inputs whose outputs change"),
}
DEFAULTS: dict[str, float] = {k: v[0] for k, v in THRESHOLDS.items()}
INTEGER_KEYS = frozenset({"min_samples", "small_sample_max"})


def resolve(overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Defaults with ``overrides`` applied; an unknown key or a bad value raises ValueError."""
    out = dict(DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in THRESHOLDS:
            raise ValueError(f"unknown drift threshold {key!r} (known: {', '.join(THRESHOLDS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"drift threshold {key!r} must be a non-negative number")
        out[key] = int(value) if key in INTEGER_KEYS else float(value)
    if out["min_samples"] < 2:
        raise ValueError("drift threshold 'min_samples' must be at least 2")
    return out
