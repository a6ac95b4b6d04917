"""Per-minute and per-hour rollups of llm spans, and the latency histogram they carry.

A rollup row is (ts, model) → requests, errors, cost, tokens, min/max latency and a fixed
log-spaced latency histogram: bucket 0 holds [0, 1) ms, bucket k (1..N-1) holds
[2^((k-1)/4), 2^(k/4)) ms and the last one is open-ended (from about 12 minutes). Counts of
rows add up, so any bucket of whole minutes is a sum of rows, and p50/p95 are interpolated
inside one histogram bucket (≤ 19% apart from the true value, clamped to the min and max).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Iterable, Sequence

from ..tracing.span import Span

PER_DOUBLING = 4
HIST_BUCKETS = 80
HIST_COLUMNS = tuple(f"h{k}" for k in range(HIST_BUCKETS))
RESOLUTION = 2 ** (1 / PER_DOUBLING)  # ratio of a bucket's upper to lower edge
TABLES = {"llm_rollup_1m": 60, "llm_rollup_1h": 3600}
VALUE_COLUMNS = ("requests", "errors", "cost_usd", "input_tokens", "output_tokens", "min_ms", "max_ms")
COLUMNS = ("ts", "model", *VALUE_COLUMNS, *HIST_COLUMNS)


def bucket_of(ms: float) -> int:
    if ms < 1:
        return 0
    return min(HIST_BUCKETS - 1, int(math.floor(PER_DOUBLING * math.log2(ms))) + 1)


def bucket_edges(k: int) -> tuple[float, float]:
    """[lower, upper) of bucket k in ms (the last bucket's upper edge is infinite)."""
    if k == 0:
        return 0.0, 1.0
    upper = math.inf if k == HIST_BUCKETS - 1 else 2 ** (k / PER_DOUBLING)
    return 2 ** ((k - 1) / PER_DOUBLING), upper


def percentile(counts: Sequence[int], q: float, lo: float | None = None, hi: float | None = None,
               cumulative: list[int] | None = None) -> float | None:
    """The q-quantile (0..1) from histogram counts: log-linear inside the bucket that holds
    it, clamped to the observed [lo, hi]. ``cumulative`` (running totals of ``counts``) may
    be passed when several quantiles of one histogram are wanted."""
    cum = cumulative if cumulative is not None else list(accumulate(counts))
    total = cum[-1] if cum else 0
    if total == 0:
        return None
    rank = q * total
    k = bisect_left(cum, rank)
    if k >= len(cum):  # pragma: no cover - rank <= total always lands in a bucket
        k = len(cum) - 1
    if rank <= 0:  # q = 0: the first non-empty bucket
        k = next(i for i, n in enumerate(counts) if n)
    n = counts[k]
    seen = cum[k] - n
    frac = (rank - seen) / n if n else 0.0
    a, b = bucket_edges(k)
    if k == 0:
        value = a + (b - a) * frac
    elif math.isinf(b):
        value = a
    else:
        value = a * (b / a) ** frac
    if lo is not None:
        value = max(value, lo)
    if hi is not None:
        value = min(value, hi)
    return round(value, 3)


def quantiles(counts: Sequence[int], lo: float | None, hi: float | None) -> tuple[float | None, float | None]:
    """(p50, p95) of one histogram."""
    cum = list(accumulate(counts))
    return percentile(counts, 0.5, lo, hi, cum), percentile(counts, 0.95, lo, hi, cum)


def _add(a: Any, b: Any) -> Any:
    """Unknown (None) plus unknown stays unknown; a known value is never erased."""
    if b is None:
        return a
    return b if a is None else a + b


@dataclass(slots=True)
class Delta:
    requests: int = 0
    errors: int = 0
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    hist: list[int] = field(default_factory=lambda: [0] * HIST_BUCKETS)

    def add(self, s: Span) -> None:
        self.add_values(s.status, s.duration_ms, s.cost_usd, s.input_tokens, s.output_tokens)

    def add_values(self, status: str, ms: float | None, cost_usd: float | None,
                   input_tokens: int | None, output_tokens: int | None) -> None:
        self.requests += 1
        self.errors += status == "error"
        self.cost_usd = _add(self.cost_usd, cost_usd)
        self.input_tokens = _add(self.input_tokens, input_tokens)
        self.output_tokens = _add(self.output_tokens, output_tokens)
        if ms is not None:
            ms = max(0.0, float(ms))
            self.min_ms = ms if self.min_ms is None else min(self.min_ms, ms)
            self.max_ms = ms if self.max_ms is None else max(self.max_ms, ms)
            self.hist[bucket_of(ms)] += 1

    def merge(self, other: "Delta") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.cost_usd = _add(self.cost_usd, other.cost_usd)
        self.input_tokens = _add(self.input_tokens, other.input_tokens)
        self.output_tokens = _add(self.output_tokens, other.output_tokens)
        if other.min_ms is not None:
            self.min_ms = other.min_ms if self.min_ms is None else min(self.min_ms, other.min_ms)
        if other.max_ms is not None:
            self.max_ms = other.max_ms if self.max_ms is None else max(self.max_ms, other.max_ms)
        self.hist = [a + b for a, b in zip(self.hist, other.hist)]

    def summary(self, bucket_start: int, model: str) -> dict[str, Any]:
        p50, p95 = quantiles(self.hist, self.min_ms, self.max_ms)
        return {
            "bucket_start": bucket_start,
            "model": model or None,
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": p50,
            "p95_ms": p95,
            "cost_usd": self.cost_usd,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }

    def row(self, ts: int, model: str) -> tuple:
        return (ts, model, self.requests, self.errors, self.cost_usd, self.input_tokens, self.output_tokens,
                self.min_ms, self.max_ms, *self.hist)


def model_key(s: Span) -> str:
    """The rollup key for a span's model: the reported version, else the configured one."""
    return s.response_model or s.model or ""


def deltas(spans: Iterable[Span]) -> dict[str, list[tuple]]:
    """Rows to upsert per rollup table for these (new) spans; llm spans only, sorted by key
    so concurrent writers lock rows in the same order. Spans are added up per minute once;
    the coarser tables merge those minutes (their widths are whole minutes)."""
    out: dict[str, list[tuple]] = {}
    minutes: dict[tuple[int, str], Delta] = {}
    for s in spans:
        if s.kind != "llm":
            continue
        key = (int(s.start_time // 60) * 60, model_key(s))
        d = minutes.get(key)
        if d is None:
            d = minutes[key] = Delta()
        d.add(s)
    if not minutes:
        return out
    for table, width in TABLES.items():
        if width == 60:
            acc = minutes
        else:
            acc = {}
            for (ts, model), d in minutes.items():
                key = (ts // width * width, model)
                into = acc.get(key)
                if into is None:
                    acc[key] = into = Delta()
                into.merge(d)
        out[table] = [acc[k].row(*k) for k in sorted(acc)]
    return out


TYPES = ("int8", "text", "int4", "int4", "float8", "int8", "int8", "float8", "float8", *("int4",) * HIST_BUCKETS)


def conflict_sql(table: str) -> str:
    """How a rollup row merges into an existing one ({least}/{greatest} are the dialect's)."""
    sets = [
        f"requests = {table}.requests + excluded.requests",
        f"errors = {table}.errors + excluded.errors",
        *(f"{c} = CASE WHEN excluded.{c} IS NULL THEN {table}.{c} "
          f"ELSE COALESCE({table}.{c}, 0) + excluded.{c} END" for c in ("cost_usd", "input_tokens", "output_tokens")),
        f"min_ms = CASE WHEN {table}.min_ms IS NULL THEN excluded.min_ms WHEN excluded.min_ms IS NULL "
        f"THEN {table}.min_ms ELSE {{least}}({table}.min_ms, excluded.min_ms) END",
        f"max_ms = CASE WHEN {table}.max_ms IS NULL THEN excluded.max_ms WHEN excluded.max_ms IS NULL "
        f"THEN {table}.max_ms ELSE {{greatest}}({table}.max_ms, excluded.max_ms) END",
        *(f"{h} = {table}.{h} + excluded.{h}" for h in HIST_COLUMNS),
    ]
    return f"ON CONFLICT (ts, model) DO UPDATE SET {', '.join(sets)}"


def create_sql(table: str) -> str:
    hist = ",\n    ".join(f"{h} INTEGER NOT NULL DEFAULT 0" for h in HIST_COLUMNS)
    return f"""
CREATE TABLE {table} (
    ts BIGINT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    cost_usd DOUBLE PRECISION,
    input_tokens BIGINT,
    output_tokens BIGINT,
    min_ms DOUBLE PRECISION,
    max_ms DOUBLE PRECISION,
    {hist},
    PRIMARY KEY (ts, model)
);
"""


def sqlite_backfill_sql(table: str, width: int) -> str:
    """Fill a new rollup table from the llm spans already stored (SQLite databases that
    predate rollups). Bucket edges are the same as ``bucket_of``."""
    hist = []
    for k in range(HIST_BUCKETS):
        lo, hi = bucket_edges(k)
        cond = f"duration_ms < {hi!r}" if k == 0 else (
            f"duration_ms >= {lo!r}" if math.isinf(hi) else f"duration_ms >= {lo!r} AND duration_ms < {hi!r}")
        hist.append(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)")
    return f"""
INSERT INTO {table} ({', '.join(COLUMNS)})
SELECT CAST(start_time / {width} AS INTEGER) * {width} AS bts, COALESCE(response_model, model, ''),
       COUNT(*), SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END),
       SUM(cost_usd), SUM(input_tokens), SUM(output_tokens), MIN(duration_ms), MAX(duration_ms),
       {', '.join(hist)}
FROM spans WHERE kind = 'llm' AND start_time >= 0
GROUP BY bts, COALESCE(response_model, model, '');
"""
