"""The daily review queue: a sample of production traces, materialised once per day so
every reviewer sees the same queue.

The queue of day D samples the llm calls of the ``window`` (24 h by default) before it is
built, ending at the end of D at the latest (built on D itself it covers the last 24 hours;
built for a past day, that day). Left out: eval runs and drift probes (not production
traffic), guards' judge calls, traces already queued in the week before and traces that
already have a human label.

Strata, filled in this order, each trace once:

1. ``negative_feedback`` (thumbs down, correction, regenerated, ignored), ``low_score``
   (a ``score`` below the middle of its scale) and ``guard_flagged`` (a guard decided fail
   on the call): up to a sixth of the queue each;
2. stratified by ``alias`` and by ``prompt version`` (when a dimension has two values or
   more): the same share for every value, a third of the queue in all, round-robin;
3. ``random``: a uniform sample of the rest, up to the size.

Sampling is a bottom-k sample on a hash of (day, trace id): deterministic, independent of
the scan order, each stratum a uniform sample of its traces, and memory bounded by the
queue size (the window's spans are read a page at a time). Two servers building the same
day at once pick the same traces; the first to commit wins, the other reads its queue.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequest
from .labels import OVERALL
from .schema import ensure_schema
from .targets import guard_failed, is_eval_traffic, is_judge, prompt_version, route_of
from .when import day_bounds, parse_day, today

RISK = ("negative_feedback", "low_score", "guard_flagged")
PAGE = 2000
MAX_GROUPS = 100
REQUEUE_AFTER_S = 7 * 86400
DEFAULT_WINDOW_S = 86400.0
QUEUE_COLUMNS = ("day", "position", "trace_id", "span_id", "stratum", "reasons", "alias", "model", "prompt_version",
                 "trace_time", "verdict", "reviewer", "reviewed_at")


@dataclass(slots=True)
class Candidate:
    trace_id: str
    span_id: str
    start: float
    alias: str | None
    model: str | None
    prompt_version: str | None
    route: str | None
    flags: set[str] = field(default_factory=set)


class BottomK:
    """The k candidates with the smallest keys (a uniform sample without replacement)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.heap: list[tuple[float, str]] = []  # (-key, trace id): the root is the largest key
        self.items: dict[str, Candidate] = {}

    def offer(self, key: float, c: Candidate) -> None:
        if self.k <= 0:
            return
        have = self.items.get(c.trace_id)
        if have is not None:
            have.flags |= c.flags
            return
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, (-key, c.trace_id))
            self.items[c.trace_id] = c
        elif key < -self.heap[0][0]:
            _, out = heapq.heapreplace(self.heap, (-key, c.trace_id))
            del self.items[out]
            self.items[c.trace_id] = c

    def ordered(self) -> list[Candidate]:
        return [self.items[t] for _, t in sorted(self.heap, key=lambda x: -x[0])]


def _key(day: str, trace_id: str) -> float:
    h = hashlib.sha256(f"review:{day}:{trace_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def window_for(day: str, window_s: float = DEFAULT_WINDOW_S, now: float | None = None) -> tuple[float, float]:
    now = time.time() if now is None else now
    d0, d1 = day_bounds(day)
    if d0 > now:
        raise InvalidRequest(f"Invalid value for 'day': {day} is in the future", param="day", code="invalid_parameter")
    end = min(now, d1)
    return end - window_s, end


def _scan(store: Any, start: float, end: float, day: str, size: int, neg: set[str], low: set[str],
          skip: set[str]) -> tuple[dict[str, Any], int]:
    """Offer every eligible llm call of the window to the strata's samplers."""
    q = store.dialect.q
    risk_k = max(1, math.ceil(size / 6))
    group_k = max(1, math.ceil(size / 3))
    risk = {r: BottomK(risk_k) for r in RISK}
    groups: dict[str, dict[str, BottomK]] = {"alias": {}, "prompt": {}}
    rand = BottomK(size * 2)
    seen: set[str] = set()
    last: tuple[float, str] | None = None
    cols = "trace_id, span_id, start_time, alias, model, response_model, name, attributes"
    while True:
        cond = "kind = 'llm' AND start_time >= ? AND start_time < ?"
        args: list[Any] = [start, end]
        if last is not None:
            cond += " AND (start_time, span_id) > (?, ?)"
            args += list(last)
        with store._read() as cur:
            cur.execute(q(f"SELECT {cols} FROM spans WHERE {cond} ORDER BY start_time, span_id LIMIT ?"),
                        (*args, PAGE))
            page = cur.fetchall()
        for tid, sid, st, alias, model, rmodel, name, attrs_raw in page:
            if tid in skip:
                continue
            span = {"name": name, "alias": alias}
            attrs = orjson.loads(attrs_raw) if attrs_raw else {}
            span["attributes"] = attrs
            if is_judge(span) or is_eval_traffic(span):
                continue
            seen.add(tid)
            c = Candidate(tid, sid, st, alias, rmodel or model, prompt_version(attrs), route_of(span))
            if tid in neg:
                c.flags.add("negative_feedback")
            if tid in low:
                c.flags.add("low_score")
            if guard_failed(span):
                c.flags.add("guard_flagged")
            key = _key(day, tid)
            for r in c.flags:
                risk[r].offer(key, c)
            for dim, val in (("alias", c.alias), ("prompt", c.prompt_version)):
                if val is None:
                    continue
                g = groups[dim].get(val)
                if g is None and len(groups[dim]) < MAX_GROUPS:
                    g = groups[dim][val] = BottomK(group_k)
                if g is not None:
                    g.offer(key, c)
            rand.offer(key, c)
        if len(page) < PAGE:
            break
        last = (page[-1][2], page[-1][1])
    return {"risk": risk, "groups": groups, "random": rand}, len(seen)


def _labelled(store: Any, ids: list[str]) -> set[str]:
    out: set[str] = set()
    q = store.dialect.q
    for k in range(0, len(ids), 400):
        chunk = ids[k:k + 400]
        with store._read() as cur:
            cur.execute(q(f"SELECT trace_id FROM human_labels WHERE criterion = ? AND trace_id IN "
                          f"({', '.join('?' * len(chunk))})"), (OVERALL, *chunk))
            out.update(r[0] for r in cur.fetchall())
    return out


def sample(store: Any, day: str, size: int, start: float, end: float,
           exclude: set[str] | None = None) -> tuple[list[tuple[Candidate, str]], int]:
    """[(candidate, stratum)] in queue order, and the number of eligible traces."""
    q = store.dialect.q
    lo = int(start)
    with store._read() as cur:
        cur.execute(q("SELECT DISTINCT trace_id FROM feedback WHERE trace_ts >= ? AND trace_ts < ? AND sentiment < 0 "
                      "AND kind <> 'score' LIMIT 100000"), (lo, int(end) + 1))
        neg = {r[0] for r in cur.fetchall()}
        cur.execute(q("SELECT DISTINCT trace_id FROM feedback WHERE trace_ts >= ? AND trace_ts < ? AND kind = 'score' "
                      "AND score_norm < 0.5 LIMIT 100000"), (lo, int(end) + 1))
        low = {r[0] for r in cur.fetchall()}
        cur.execute(q("SELECT trace_id FROM review_queue WHERE trace_time >= ? LIMIT 200000"),
                    (start - REQUEUE_AFTER_S,))
        skip = {r[0] for r in cur.fetchall()} | set(exclude or ())
    pools, eligible = _scan(store, start, end, day, size, neg, low, skip)
    offered = {c.trace_id for s in pools["risk"].values() for c in s.items.values()}
    offered |= {c.trace_id for d in pools["groups"].values() for s in d.values() for c in s.items.values()}
    offered |= set(pools["random"].items)
    labelled = _labelled(store, sorted(offered))
    picked: list[tuple[Candidate, str]] = []
    taken: set[str] = set(labelled)

    def take(c: Candidate, stratum: str) -> bool:
        if c.trace_id in taken or len(picked) >= size:
            return False
        taken.add(c.trace_id)
        picked.append((c, stratum))
        return True

    risk_quota = max(1, math.ceil(size / 6))
    for r in RISK:
        n = 0
        for c in pools["risk"][r].ordered():
            if n >= risk_quota:
                break
            n += take(c, r)
    # stratified: every value of a dimension with at least two values gets the same share
    strata = [(f"{dim}:{val}", s.ordered()) for dim, d in pools["groups"].items() if len(d) >= 2
              for val, s in sorted(d.items())]
    if strata:
        budget = max(len(strata), math.ceil(size / 3))
        share = max(1, budget // len(strata))
        counts = {name: 0 for name, _ in strata}
        cursors = {name: 0 for name, _ in strata}
        progress = True
        while progress and len(picked) < size:
            progress = False
            for name, items in strata:
                if counts[name] >= share:
                    continue
                while cursors[name] < len(items):
                    c = items[cursors[name]]
                    cursors[name] += 1
                    if take(c, name):
                        counts[name] += 1
                        progress = True
                        break
    for c in pools["random"].ordered():
        if len(picked) >= size:
            break
        take(c, "random")
    return picked, eligible


def _queue_row(row: dict[str, Any]) -> dict[str, Any]:
    row["reasons"] = orjson.loads(row["reasons"]) if row.get("reasons") else []
    return row


def get_queue(store: Any, day: str) -> dict[str, Any] | None:
    """A materialised day: its window, size and items in order (with their verdicts)."""
    ensure_schema(store)
    q = store.dialect.q
    with store._read() as cur:
        cur.execute(q("SELECT day, window_start, window_end, size, candidates, params, created_by, created_at "
                      "FROM review_days WHERE day = ?"), (day,))
        head = cur.fetchone()
        if head is None:
            return None
        cur.execute(q(f"SELECT {', '.join(QUEUE_COLUMNS)} FROM review_queue WHERE day = ? ORDER BY position"), (day,))
        cols = [d[0] for d in cur.description]
        items = [_queue_row(dict(zip(cols, r))) for r in cur.fetchall()]
    keys = ("day", "window_start", "window_end", "size", "candidates", "params", "created_by", "created_at")
    out = dict(zip(keys, head))
    out["params"] = orjson.loads(out["params"]) if out["params"] else {}
    out["items"] = items
    out["reviewed"] = sum(1 for i in items if i["verdict"])
    out["passed"] = sum(1 for i in items if i["verdict"] == "pass")
    out["failed"] = sum(1 for i in items if i["verdict"] == "fail")
    return out


def build_queue(store: Any, day: str | None = None, size: int = 50, *, window_s: float = DEFAULT_WINDOW_S,
                force: bool = False, created_by: str | None = None, now: float | None = None) -> dict[str, Any]:
    """Materialise the queue of ``day`` (today by default) unless it exists; ``force``
    samples it again, keeping the items already reviewed."""
    ensure_schema(store)
    day = parse_day(day)
    if not 1 <= size <= 5000:
        raise InvalidRequest("Invalid value for 'size': from 1 to 5000", param="size", code="invalid_parameter")
    if not window_s > 0:
        raise InvalidRequest("Invalid value for 'window': must be positive", param="window", code="invalid_parameter")
    existing = get_queue(store, day)
    if existing is not None and not force:
        existing["created"] = False
        return existing
    start, end = window_for(day, window_s, now)
    keep: list[dict[str, Any]] = [i for i in (existing or {}).get("items", []) if i["verdict"]]
    picked, eligible = sample(store, day, max(0, size - len(keep)) or 1, start, end,
                              exclude={i["trace_id"] for i in keep})
    if len(keep) >= size:
        picked = []
    q = store.dialect.q
    params = {"window_s": window_s, "force": force}
    rows = []
    for n, (c, stratum) in enumerate(picked, start=len(keep) + 1):
        reasons = sorted(c.flags) if c.flags else []
        if stratum not in reasons:
            reasons = [stratum] + reasons
        rows.append((day, n, c.trace_id, c.span_id, stratum, orjson.dumps(reasons).decode(), c.alias, c.model,
                     c.prompt_version, c.start, None, None, None))
    with store._write() as cur:
        if force:
            cur.execute(q("DELETE FROM review_queue WHERE day = ? AND verdict IS NULL"), (day,))
            cur.execute(q("DELETE FROM review_days WHERE day = ?"), (day,))
            for i, item in enumerate(keep, start=1):
                cur.execute(q("UPDATE review_queue SET position = ? WHERE day = ? AND trace_id = ?"),
                            (i, day, item["trace_id"]))
        cur.execute(q("INSERT INTO review_days (day, window_start, window_end, size, candidates, params, created_by, "
                      "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day) DO NOTHING"),
                    (day, start, end, size, eligible, orjson.dumps(params).decode(), created_by, time.time()))
        won = cur.rowcount == 1
        if won and rows:
            cur.executemany(q(f"INSERT INTO review_queue ({', '.join(QUEUE_COLUMNS)}) VALUES "
                              f"({', '.join('?' * len(QUEUE_COLUMNS))}) ON CONFLICT (day, trace_id) DO NOTHING"), rows)
    out = get_queue(store, day)
    assert out is not None
    out["created"] = won
    return out


def ensure_today(store: Any, size: int, created_by: str | None = None) -> dict[str, Any]:
    """Today's queue, built on first use."""
    return build_queue(store, today(), size, created_by=created_by)
