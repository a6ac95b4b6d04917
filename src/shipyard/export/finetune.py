"""Fine-tuning data from production: the calls people accepted or corrected, as JSONL.

Candidates are the llm calls with feedback (in the time window, matching ``--where``) and
the traces a reviewer labelled. Per call, in this order:

1. a ``correction`` or an ``edited`` event: included as **corrected** — the latest corrected
   text replaces the assistant turn (even when the call also got negative feedback or
   failed: the correction is what it should have said);
2. any negative signal (thumbs down, regenerated, ignored, a low score, a reviewer's fail):
   excluded, **negative_feedback** (mixed signals count as negative);
3. a failed call: excluded, **error**; no recorded request or answer: **no_input** /
   **no_output**;
4. a positive signal: included as **accepted** (``accepted`` or ``copied``), **thumbs_up**
   or **reviewed_pass** (a reviewer's pass), in that order of precedence;
5. otherwise (only comments or labels): excluded, **no_positive_signal**.

Every text is PII-redacted with the ``pii`` guard's detector (``[EMAIL]``-style
placeholders), then identical examples are dropped (**duplicate**), and each example goes
to train or validation by a hash of its content (deterministic: the same example always
lands in the same split). ``summary.json`` counts all of it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson

from ..errors import InvalidRequest
from ..feedback.labels import OVERALL, iter_human_labels
from ..feedback.schema import ensure_schema
from ..feedback.service import FEEDBACK_COLUMNS
from ..feedback.targets import is_eval_traffic, target_in_trace
from ..timeparse import parse_when
from .formats import CONVERTERS, FORMATS, VALIDATORS, Unsupported, text_of

INCLUDE_REASONS = ("corrected", "accepted", "thumbs_up", "reviewed_pass")
EXCLUDE_REASONS = ("negative_feedback", "error", "no_input", "no_output", "no_positive_signal", "duplicate",
                   "unsupported_content", "not_matching")
WHERE_KEYS = ("alias", "model", "route", "prompt", "source", "user", "session", "since", "until")
DEFAULT_SINCE = "30d"
CHUNK = 200


@dataclass
class ExportSummary:
    format: str
    out: str
    window: tuple[float, float]
    where: dict[str, str]
    val_fraction: float
    candidates: int = 0
    included: dict[str, int] = field(default_factory=lambda: {r: 0 for r in INCLUDE_REASONS})
    excluded: dict[str, int] = field(default_factory=lambda: {r: 0 for r in EXCLUDE_REASONS})
    train: int = 0
    validation: int = 0
    pii_redacted: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return self.train + self.validation

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "out": self.out, "window": {"start": self.window[0], "end": self.window[1]},
                "where": self.where, "val_fraction": self.val_fraction, "candidates": self.candidates,
                "examples": self.written, "train": self.train, "validation": self.validation,
                "included": self.included, "excluded": self.excluded, "pii_redacted": self.pii_redacted,
                "files": self.files, "created_at": time.time()}


def parse_where(items: list[str] | None) -> dict[str, str]:
    """``["alias=chat", "model=x,since=7d"]`` -> {"alias": "chat", "model": "x", "since": "7d"}."""
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not value:
                raise InvalidRequest(f"--where: expected key=value, got {part.strip()!r}", param="where")
            if key not in WHERE_KEYS:
                raise InvalidRequest(f"--where: unknown key {key!r} (known: {', '.join(WHERE_KEYS)})", param="where")
            out[key] = value
    if "source" in out and out["source"] not in ("end_user", "annotator", "judge"):
        raise InvalidRequest("--where source=: end_user, annotator or judge", param="where")
    return out


class Redactor:
    """PII redaction with the pii guard's detector; counts what it replaced per entity."""

    def __init__(self) -> None:
        from ..guards.registry import build_guard

        self.guard: Any = build_guard({"name": "pii", "action": "redact"}, "output", "export")
        self.counts: dict[str, int] = {}

    def text(self, s: str) -> str:
        findings = self.guard.find(s)
        if not findings:
            return s
        for f in findings:
            self.counts[f.entity] = self.counts.get(f.entity, 0) + 1
        return self.guard.rewrite(s, findings, "redact")

    def content(self, c: Any) -> Any:
        if isinstance(c, str):
            return self.text(c)
        if isinstance(c, list):
            return [{**p, "text": self.text(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str)
                    else p for p in c]
        return c

    def message(self, m: dict[str, Any]) -> dict[str, Any]:
        out = dict(m)
        if "content" in out:
            out["content"] = self.content(out["content"])
        if out.get("tool_calls"):
            calls = []
            for c in out["tool_calls"]:
                fn = dict(c.get("function") or {})
                if isinstance(fn.get("arguments"), str):
                    fn["arguments"] = self.text(fn["arguments"])
                calls.append({**c, "function": fn})
            out["tool_calls"] = calls
        return out


def _matches(target: Any, where: dict[str, str]) -> bool:
    for key, attr in (("alias", "alias"), ("model", "model"), ("route", "route"), ("session", "session_id"),
                      ("user", "user_id")):
        if key in where and getattr(target, attr) != where[key]:
            return False
    if "prompt" in where:
        pv = target.prompt_version or ""
        want = where["prompt"]
        if pv != want and pv.split("@", 1)[0] != want:
            return False
    return True


def _candidates(store: Any, start: float, end: float, where: dict[str, str]) -> Iterator[list[str]]:
    """Trace ids with feedback in the window (by the call's time) or with a review, in chunks."""
    q = store.dialect.q
    seen: set[str] = set()
    last: tuple[int, float, str] | None = None
    src = " AND source = ?" if "source" in where else ""
    while True:
        args: list[Any] = [int(start), int(end) + 1] + ([where["source"]] if src else [])
        cond = "trace_ts >= ? AND trace_ts < ?" + src
        if last is not None:
            cond += " AND (trace_ts, trace_time, trace_id) > (?, ?, ?)"
            args += list(last)
        # earliest call first (exact time, not just the second): of two identical examples,
        # the first one recorded is kept, whatever the random trace ids
        with store._read() as cur:
            cur.execute(q(f"SELECT DISTINCT trace_ts, trace_time, trace_id FROM feedback WHERE {cond} "
                          "ORDER BY trace_ts, trace_time, trace_id LIMIT ?"), (*args, CHUNK))
            rows = cur.fetchall()
        fresh = []
        for _, _, t in rows:
            if t not in seen:
                seen.add(t)
                fresh.append(t)
        if fresh:
            yield fresh
        if len(rows) < CHUNK:
            break
        last = (int(rows[-1][0]), float(rows[-1][1]), rows[-1][2])
    if "source" in where and where["source"] != "annotator":
        return
    batch: list[str] = []
    for lab in iter_human_labels(store, OVERALL, include_implied=False):
        if lab["trace_id"] not in seen:
            seen.add(lab["trace_id"])
            batch.append(lab["trace_id"])
            if len(batch) >= CHUNK:
                yield batch
                batch = []
    if batch:
        yield batch


def _feedback_of(store: Any, ids: list[str], source: str | None) -> dict[str, list[dict[str, Any]]]:
    q = store.dialect.q
    out: dict[str, list[dict[str, Any]]] = {}
    sql = (f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback WHERE trace_id IN ({', '.join('?' * len(ids))})"
           + (" AND source = ?" if source else "") + " ORDER BY created_at, feedback_id")
    with store._read() as cur:
        cur.execute(q(sql), (*ids, *([source] if source else [])))
        cols = [d[0] for d in cur.description]
        for r in cur.fetchall():
            d = dict(zip(cols, r))
            out.setdefault(d["trace_id"], []).append(d)
    return out


def _reviews_of(store: Any, ids: list[str]) -> dict[str, str]:
    q = store.dialect.q
    with store._read() as cur:
        cur.execute(q(f"SELECT trace_id, label FROM human_labels WHERE criterion = ? AND origin = 'review' AND "
                      f"trace_id IN ({', '.join('?' * len(ids))})"), (OVERALL, *ids))
        return {t: lab for t, lab in cur.fetchall()}


def decide(events: list[dict[str, Any]], review: str | None, span: dict[str, Any] | None) -> tuple[str, str | None]:
    """(reason, corrected text or None) for one call (see the module docstring)."""
    corrections = [e for e in events if e["kind"] in ("correction", "edited") and e.get("text")]
    if corrections:
        return "corrected", corrections[-1]["text"]
    if any(e["sentiment"] < 0 for e in events) or review == "fail":
        return "negative_feedback", None
    if span is None:
        return "no_output", None
    if span.get("status") == "error":
        return "error", None
    kinds = {e["kind"] for e in events if e["sentiment"] > 0}
    if kinds & {"accepted", "copied"}:
        return "accepted", None
    if "thumbs" in kinds:
        return "thumbs_up", None
    if review == "pass":
        return "reviewed_pass", None
    return "no_positive_signal", None


def _assistant(span: dict[str, Any], corrected: str | None) -> dict[str, Any] | None:
    if corrected is not None:
        return {"role": "assistant", "content": corrected}
    out = span.get("output")
    if not isinstance(out, dict) or not isinstance(out.get("choices"), list) or not out["choices"]:
        return None
    msg = (out["choices"][0] or {}).get("message") or {}
    if msg.get("tool_calls"):
        return {"role": "assistant", "content": msg.get("content"), "tool_calls": msg["tool_calls"]}
    content = msg.get("content")
    text = text_of(content)
    if text is None or not text.strip():
        return None
    return {"role": "assistant", "content": content}


def _split(digest: str, fraction: float) -> str:
    if fraction <= 0:
        return "train"
    return "validation" if int(digest[:16], 16) / 2**64 < fraction else "train"


def export_finetune(store: Any, out_dir: str | Path, fmt: str = "openai", *, where: dict[str, str] | None = None,
                    val_fraction: float = 0.1, reasons: list[str] | None = None,
                    now: float | None = None) -> ExportSummary:
    """Select, convert, redact, de-duplicate and split; write ``train.jsonl``,
    ``validation.jsonl`` (when it has lines), ``provenance.jsonl`` and ``summary.json``
    into ``out_dir``. With no example to write, nothing is written (``summary.written == 0``)."""
    if fmt not in FORMATS:
        raise InvalidRequest(f"unknown format {fmt!r} (use {', '.join(FORMATS)})", param="format")
    if not 0 <= val_fraction < 1:
        raise InvalidRequest("--val-fraction must be in [0, 1)", param="val_fraction")
    wanted = set(reasons or INCLUDE_REASONS)
    bad = wanted - set(INCLUDE_REASONS)
    if bad:
        raise InvalidRequest(f"unknown reason(s) {', '.join(sorted(bad))} (use {', '.join(INCLUDE_REASONS)})",
                             param="reasons")
    ensure_schema(store)
    where = dict(where or {})
    now = time.time() if now is None else now
    start = parse_when(where.get("since", DEFAULT_SINCE), "since", now)
    end = parse_when(where["until"], "until", now) if "until" in where else now + 60
    summary = ExportSummary(fmt, str(out_dir), (start, end), where, val_fraction)
    convert, validate = CONVERTERS[fmt], VALIDATORS[fmt]
    redactor = Redactor()
    seen: set[str] = set()
    lines: dict[str, list[bytes]] = {"train": [], "validation": []}
    provenance: list[bytes] = []
    pii: dict[str, int] = {}  # redactions in the examples written
    source = where.get("source")
    for ids in _candidates(store, start, end, where):
        events_by_trace = _feedback_of(store, ids, source)
        reviews = _reviews_of(store, ids)
        for trace_id in ids:
            trace = store.get_trace(trace_id)
            if trace is None:
                continue
            events = events_by_trace.get(trace_id, [])
            # feedback may address different calls of one trace: one example per call
            by_span: dict[str | None, list[dict[str, Any]]] = {}
            for e in events:
                by_span.setdefault(e["span_id"], []).append(e)
            review = reviews.get(trace_id)
            main = target_in_trace(trace)
            if review is not None and (main.span_id if main else None) not in by_span:
                by_span.setdefault(main.span_id if main else None, [])
            for span_id, evs in by_span.items():
                target = target_in_trace(trace, span_id=span_id) if span_id else main
                if target is None:
                    continue
                if not start <= (trace.get("start_time") or 0) < end or not _matches(target, where):
                    continue
                span = next((s for s in trace.get("spans") or [] if s.get("span_id") == target.span_id), None)
                if span is not None and is_eval_traffic(span):
                    continue
                summary.candidates += 1
                span_review = review if target.span_id == (main.span_id if main else None) else None
                reason, corrected = decide(evs, span_review, span)
                if reason not in INCLUDE_REASONS:
                    summary.excluded[reason] += 1
                    continue
                if reason not in wanted:
                    summary.excluded["not_matching"] += 1
                    continue
                body = (span or {}).get("input")
                messages = body.get("messages") if isinstance(body, dict) else None
                if not isinstance(messages, list) or not messages:
                    summary.excluded["no_input"] += 1
                    continue
                answer = _assistant(span, corrected)
                if answer is None:
                    summary.excluded["no_output"] += 1
                    continue
                redactor.counts = {}
                convo = [redactor.message(m) for m in messages if isinstance(m, dict)] + [redactor.message(answer)]
                tools = body.get("tools") if isinstance(body.get("tools"), list) else None
                try:
                    line = convert(convo, tools)
                    validate(line)
                except (Unsupported, ValueError):
                    summary.excluded["unsupported_content"] += 1
                    continue
                raw = orjson.dumps(line, option=orjson.OPT_SORT_KEYS)
                digest = hashlib.sha256(raw).hexdigest()
                if digest in seen:
                    summary.excluded["duplicate"] += 1
                    continue
                seen.add(digest)
                split = _split(digest, val_fraction)
                lines[split].append(orjson.dumps(line))
                summary.included[reason] += 1
                for entity, n in redactor.counts.items():
                    pii[entity] = pii.get(entity, 0) + n
                provenance.append(orjson.dumps({"file": f"{split}.jsonl", "line": len(lines[split]),
                                                "trace_id": trace_id, "span_id": target.span_id, "reason": reason}))
    summary.train, summary.validation = len(lines["train"]), len(lines["validation"])
    summary.pii_redacted = dict(sorted(pii.items()))
    if summary.written == 0:
        return summary
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        path = out / f"{split}.jsonl"
        if lines[split]:
            path.write_bytes(b"\n".join(lines[split]) + b"\n")
            summary.files.append(path.name)
        elif path.exists():  # a stale file of an earlier export would mix in
            path.unlink()
    (out / "provenance.jsonl").write_bytes(b"\n".join(provenance) + b"\n")
    summary.files += ["provenance.jsonl", "summary.json"]
    (out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    return summary


def render_summary(s: ExportSummary) -> str:
    lines = [f"fine-tuning export ({s.format}): {s.written} examples from {s.candidates} candidate calls"
             + (f" -> {s.out}" if s.written else "")]
    lines.append(f"  train {s.train}, validation {s.validation} (val fraction {s.val_fraction:g})")
    lines.append("  included: " + (", ".join(f"{k} {v}" for k, v in s.included.items() if v) or "none"))
    lines.append("  excluded: " + (", ".join(f"{k} {v}" for k, v in s.excluded.items() if v) or "none"))
    if s.pii_redacted:
        lines.append("  PII redacted: " + ", ".join(f"{k} {v}" for k, v in s.pii_redacted.items()))
    return "\n".join(lines)
