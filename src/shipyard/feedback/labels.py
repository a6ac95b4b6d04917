"""Human labels: what reviewers decided about traces, as rows judge alignment reads.

A review of a trace is a verdict (pass / fail), failure-mode tags, a note and the reviewer.
It is stored in ``human_labels`` as one row per (trace, criterion):

- criterion ``overall``: the verdict itself (its ``tags`` column lists the tags);
- one row per tag, label ``fail``: tags are free-form failure modes and become criteria
  (``too-verbose``, ``hallucination``, ...);
- label ``pass``, ``origin = 'implied'``, for every *other* known criterion, on traces the
  reviewer passed or failed naming the failure modes (at least one tag): a reviewer who
  tags what is wrong says the rest is fine. When a new tag appears, earlier reviews get
  their implied pass for it; when a tag is no longer used anywhere, its implied rows go.
  So each criterion has both passes and fails for alignment to measure. Reviewed rows
  have ``origin = 'review'``; ``iter_human_labels(..., include_implied=False)`` leaves the
  implied ones out.

Reviewing a trace again replaces its rows (one current label per trace and criterion; the
latest reviewer wins). ``shipyard.evals`` reads the table directly (``shipyard eval align``
without ``--labels``) or through ``shipyard review export-labels`` (JSONL).
"""

from __future__ import annotations

import re
import time
from typing import Any, Iterator

import orjson

from ..errors import InvalidRequest, NotFound
from .schema import ensure_schema

OVERALL = "overall"
VERDICTS = ("pass", "fail")
MAX_TAGS = 20
MAX_NOTE = 4000
MAX_REVIEWER = 100
PAGE = 500
_TAG = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
LABEL_COLUMNS = ("trace_id", "criterion", "span_id", "label", "tags", "note", "reviewer", "origin", "day",
                 "created_at", "updated_at")


def normalize_tag(raw: Any) -> str:
    """'Too verbose ' -> 'too-verbose'; InvalidRequest for anything that cannot be a criterion name."""
    if not isinstance(raw, str):
        raise InvalidRequest("Invalid value for 'tags': each tag is a string", param="tags", code="invalid_tag")
    tag = re.sub(r"\s+", "-", raw.strip().lower())
    if not _TAG.match(tag):
        raise InvalidRequest(f"Invalid tag {raw!r}: use letters, digits, '-', '_' or '.', at most 64 characters",
                             param="tags", code="invalid_tag")
    if tag == OVERALL:
        raise InvalidRequest(f"'{OVERALL}' is the verdict's own criterion, not a tag", param="tags", code="invalid_tag")
    return tag


def parse_tags(raw: Any) -> list[str]:
    """Tags from a list or a comma-separated string, normalised, without duplicates."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        raw = [t for t in raw.split(",") if t.strip()]
    if not isinstance(raw, list):
        raise InvalidRequest("Invalid value for 'tags': a list of strings (or one comma-separated string)",
                             param="tags", code="invalid_tag")
    tags = list(dict.fromkeys(normalize_tag(t) for t in raw if not (isinstance(t, str) and not t.strip())))
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"Invalid value for 'tags': at most {MAX_TAGS} tags", param="tags", code="invalid_tag")
    return tags


def _row(cur: Any) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    out = []
    for r in cur.fetchall():
        d = dict(zip(cols, r))
        d["tags"] = orjson.loads(d["tags"]) if d.get("tags") else []
        out.append(d)
    return out


def set_review(store: Any, trace_id: str, verdict: str, tags: Any = None, note: str | None = None,
               reviewer: str | None = None, *, day: str | None = None, span_id: str | None = None,
               check_trace: bool = True, now: float | None = None) -> dict[str, Any]:
    """Record (or replace) the review of one trace; returns its labels."""
    ensure_schema(store)
    q = store.dialect.q
    if verdict not in VERDICTS:
        raise InvalidRequest(f"Invalid value for 'verdict': expected pass or fail, got {verdict!r}",
                             param="verdict", code="invalid_verdict")
    tag_list = parse_tags(tags)
    if note is not None and not isinstance(note, str):
        raise InvalidRequest("Invalid value for 'note': expected a string", param="note")
    note = (note or "").strip() or None
    if note and len(note) > MAX_NOTE:
        raise InvalidRequest(f"Invalid value for 'note': at most {MAX_NOTE} characters", param="note")
    if reviewer is not None and not isinstance(reviewer, str):
        raise InvalidRequest("Invalid value for 'reviewer': expected a string", param="reviewer")
    reviewer = (reviewer or "").strip()[:MAX_REVIEWER] or None
    if check_trace:
        trace = store.get_trace(trace_id)
        if trace is None:
            raise NotFound(f"No trace with id '{trace_id}'.", param="trace_id", code="trace_not_found")
        if span_id is None:
            from .targets import main_span

            main = main_span(trace)
            span_id = main.get("span_id") if main else None
    now = time.time() if now is None else now
    tags_json = orjson.dumps(tag_list).decode()
    eligible = verdict == "pass" or bool(tag_list)
    insert = q(f"INSERT INTO human_labels ({', '.join(LABEL_COLUMNS)}) VALUES ({', '.join('?' * len(LABEL_COLUMNS))}) "
               "ON CONFLICT (trace_id, criterion) DO NOTHING")
    known_sql = q("SELECT DISTINCT criterion FROM human_labels WHERE origin = 'review' AND criterion <> ?")
    with store._write() as cur:
        cur.execute(q("SELECT created_at FROM human_labels WHERE trace_id = ? AND criterion = ?"), (trace_id, OVERALL))
        old = cur.fetchone()
        created = old[0] if old else now
        cur.execute(known_sql, (OVERALL,))
        known_before = {r[0] for r in cur.fetchall()}
        cur.execute(q("DELETE FROM human_labels WHERE trace_id = ?"), (trace_id,))
        rows = [(trace_id, OVERALL, span_id, verdict, tags_json, note, reviewer, "review", day, created, now)]
        rows += [(trace_id, t, span_id, "fail", tags_json, note, reviewer, "review", day, created, now)
                 for t in tag_list]
        cur.executemany(insert, rows)
        cur.execute(known_sql, (OVERALL,))
        known_after = {r[0] for r in cur.fetchall()}
        if eligible:
            cur.executemany(insert, [(trace_id, c, span_id, "pass", tags_json, None, reviewer, "implied", day, created,
                                      now) for c in sorted(known_after - set(tag_list))])
        for c in sorted(known_after - known_before):  # a new criterion: earlier reviews imply a pass
            cur.execute(q(
                f"INSERT INTO human_labels ({', '.join(LABEL_COLUMNS)}) "
                "SELECT h.trace_id, ?, h.span_id, 'pass', h.tags, NULL, h.reviewer, 'implied', h.day, h.created_at, ? "
                "FROM human_labels h WHERE h.criterion = ? AND h.origin = 'review' AND h.trace_id <> ? "
                "AND (h.label = 'pass' OR h.tags <> '[]') "
                "ON CONFLICT (trace_id, criterion) DO NOTHING"), (c, now, OVERALL, trace_id))
        gone = sorted(known_before - known_after)
        if gone:
            cur.execute(q(f"DELETE FROM human_labels WHERE origin = 'implied' AND criterion IN "
                          f"({', '.join('?' * len(gone))})"), gone)
        cur.execute(q("UPDATE review_queue SET verdict = ?, reviewer = ?, reviewed_at = ? WHERE trace_id = ?"),
                    (verdict, reviewer, now, trace_id))
    return {"trace_id": trace_id, "verdict": verdict, "tags": tag_list, "note": note, "reviewer": reviewer,
            "span_id": span_id, "day": day, "labels": get_labels(store, trace_id)}


def clear_review(store: Any, trace_id: str) -> bool:
    """Forget the review of one trace (and implied rows of criteria no longer used)."""
    ensure_schema(store)
    q = store.dialect.q
    known_sql = q("SELECT DISTINCT criterion FROM human_labels WHERE origin = 'review' AND criterion <> ?")
    with store._write() as cur:
        cur.execute(known_sql, (OVERALL,))
        before = {r[0] for r in cur.fetchall()}
        cur.execute(q("DELETE FROM human_labels WHERE trace_id = ?"), (trace_id,))
        deleted = cur.rowcount > 0
        cur.execute(known_sql, (OVERALL,))
        gone = sorted(before - {r[0] for r in cur.fetchall()})
        if gone:
            cur.execute(q(f"DELETE FROM human_labels WHERE origin = 'implied' AND criterion IN "
                          f"({', '.join('?' * len(gone))})"), gone)
        cur.execute(q("UPDATE review_queue SET verdict = NULL, reviewer = NULL, reviewed_at = NULL WHERE trace_id = ?"),
                    (trace_id,))
    return deleted


def get_labels(store: Any, trace_id: str) -> list[dict[str, Any]]:
    """The labels of one trace: ``overall`` first, then reviewed tags, then implied passes."""
    ensure_schema(store)
    with store._read() as cur:
        cur.execute(store.dialect.q(f"SELECT {', '.join(LABEL_COLUMNS)} FROM human_labels WHERE trace_id = ?"),
                    (trace_id,))
        rows = _row(cur)
    rows.sort(key=lambda r: (r["criterion"] != OVERALL, r["origin"] != "review", r["criterion"]))
    return rows


def labels_for(store: Any, trace_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The ``overall`` label of each of these traces that has one."""
    ensure_schema(store)
    out: dict[str, dict[str, Any]] = {}
    for k in range(0, len(trace_ids), 400):
        chunk = trace_ids[k:k + 400]
        with store._read() as cur:
            cur.execute(store.dialect.q(
                f"SELECT {', '.join(LABEL_COLUMNS)} FROM human_labels WHERE criterion = ? AND trace_id IN "
                f"({', '.join('?' * len(chunk))})"), (OVERALL, *chunk))
            for r in _row(cur):
                out[r["trace_id"]] = r
    return out


def criteria(store: Any) -> list[dict[str, Any]]:
    """Known criteria (tags used by reviewers) with their pass / fail counts."""
    ensure_schema(store)
    with store._read() as cur:
        cur.execute(store.dialect.q(
            "SELECT criterion, SUM(CASE WHEN label = 'pass' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN label = 'fail' THEN 1 ELSE 0 END) FROM human_labels GROUP BY criterion ORDER BY criterion"))
        rows = cur.fetchall()
    return [{"criterion": c, "pass": int(p or 0), "fail": int(f or 0)} for c, p, f in rows]


def _since(since: Any) -> float | None:
    if since is None or isinstance(since, (int, float)):
        return since
    from ..timeparse import parse_when

    return parse_when(since)


def iter_human_labels(store: Any, criterion: str | None = None, since: Any = None, *,
                      include_implied: bool = True) -> Iterator[dict[str, Any]]:
    """Every human label (oldest change first), read a page at a time: dicts with trace_id,
    span_id, criterion, label ('pass' / 'fail'), tags, note, reviewer, origin ('review' /
    'implied'), day, created_at, updated_at. ``since``: unix seconds, a duration like
    ``7d`` or an ISO time (labels changed since then)."""
    ensure_schema(store)
    q = store.dialect.q
    start = _since(since)
    last: tuple[float, str, str] | None = None
    while True:
        where, args = [], []
        if criterion is not None:
            where.append("criterion = ?")
            args.append(criterion)
        if start is not None:
            where.append("updated_at >= ?")
            args.append(start)
        if not include_implied:
            where.append("origin = 'review'")
        if last is not None:
            where.append("(updated_at, trace_id, criterion) > (?, ?, ?)")
            args += list(last)
        sql = f"SELECT {', '.join(LABEL_COLUMNS)} FROM human_labels"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at, trace_id, criterion LIMIT ?"
        with store._read() as cur:  # one page per read: never held across a yield
            cur.execute(q(sql), (*args, PAGE))
            page = _row(cur)
        yield from page
        if len(page) < PAGE:
            return
        r = page[-1]
        last = (r["updated_at"], r["trace_id"], r["criterion"])


def export_labels(store: Any, out: Any, criterion: str | None = None, since: Any = None, *,
                  include_implied: bool = True, full: bool = False) -> int:
    """Write labels as JSONL, one ``{"trace_id", "criterion", "label"}`` per line (the format
    ``shipyard eval align --labels`` reads; ``full`` adds every column). Returns the count."""
    n = 0
    keys = ("trace_id", "criterion", "label")
    for row in iter_human_labels(store, criterion, since, include_implied=include_implied):
        data = row if full else {k: row[k] for k in keys}
        out.write(orjson.dumps(data).decode() + "\n")
        n += 1
    return n
