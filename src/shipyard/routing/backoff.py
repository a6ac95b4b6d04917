"""Exponential back-off with full jitter, bounded, and Retry-After honoured."""

from __future__ import annotations

import random

from ..config import Backoff


def delay_for(attempt: int, cfg: Backoff, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    if retry_after is not None:
        return retry_after
    base = min(cfg.max_s, cfg.initial_s * cfg.multiplier ** (attempt - 1))
    return random.uniform(0, base) if cfg.jitter else base
