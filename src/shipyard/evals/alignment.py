"""Judge alignment (EvalGen): how well each candidate judge agrees with human labels.

Human labels are ``{trace_id or case_id, criterion, label: pass|fail}`` rows, from a JSONL
or CSV file or from the review queue's ``human_labels`` table. For each criterion, every
evaluator of the EVAL.yaml whose ``criterion`` it is (an LLM judge or a code assertion)
is a candidate judge. A judge's verdicts come from a finished run (``--run``: the
evaluator results stored for the labelled cases) or are computed now on the labelled
outputs (the traces' recorded answers, or a run's stored answers with ``--rejudge``).

Reported per judge: agreement, Cohen's kappa, true-positive and true-negative rates
(pass = positive), and EvalGen's coverage (failed outputs the judge fails), false-failure
rate (passed outputs the judge fails) and alignment (harmonic mean of coverage and
1 - FFR). The best aligned judge of each criterion is selected. Criteria and judges are
versioned: a changed criterion description or judge definition is a new version, and
every report names the versions it measured.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidRequest
from . import stats
from .datasets import ItemError, read_rows
from .evaluators import Case, EvalContext, Evaluator
from .schema import ensure_schema

PASS_WORDS = {"pass", "passed", "true", "yes", "good", "1", "ok", "👍"}
FAIL_WORDS = {"fail", "failed", "false", "no", "bad", "0", "👎"}


@dataclass(frozen=True, slots=True)
class Label:
    criterion: str
    passed: bool
    trace_id: str | None = None
    case_id: str | None = None
    run_id: str | None = None
    variant: str | None = None
    rep: int | None = None
    where: Any = None  # line number in the file

    @property
    def key(self) -> str:
        if self.trace_id:
            return self.trace_id
        return ":".join(str(x) for x in (self.run_id or "", self.variant or "", self.case_id, self.rep or 0))


def parse_label(raw: Any) -> Label:
    if not isinstance(raw, dict):
        raise ItemError("a label row must be an object")
    crit = raw.get("criterion")
    if not isinstance(crit, str) or not crit.strip():
        raise ItemError("'criterion' is required")
    value = raw.get("label", raw.get("pass"))
    if isinstance(value, bool):
        passed = value
    elif isinstance(value, (str, int)) and str(value).strip().lower() in PASS_WORDS | FAIL_WORDS:
        passed = str(value).strip().lower() in PASS_WORDS
    else:
        raise ItemError(f"label must be pass or fail, not {value!r}")
    trace_id = raw.get("trace_id") or None
    case_id = raw.get("case_id") or raw.get("case") or None
    if not trace_id and not case_id:
        raise ItemError("a label needs a 'trace_id' or a 'case_id'")
    rep = raw.get("rep", raw.get("repeat"))
    try:
        rep = None if rep in (None, "") else int(rep)
    except (TypeError, ValueError):
        raise ItemError(f"rep must be an integer, not {rep!r}") from None
    return Label(crit.strip(), passed, trace_id and str(trace_id), case_id and str(case_id),
                 raw.get("run_id") or None, raw.get("variant") or None, rep)


def read_labels(path: str | Path, *, on_error: str = "skip", errors: list[tuple[Any, str]] | None = None) -> list[Label]:
    """Labels from a JSONL/CSV file; a bad row is reported with its line number and
    skipped (``on_error="skip"``) or stops the read (``"fail"``)."""
    out = []
    for line, raw in read_rows(path, raw=True):
        try:
            if isinstance(raw, ItemError):
                raise raw
            lab = parse_label(raw)
        except ItemError as exc:
            if on_error == "fail":
                raise InvalidRequest(f"{path}: line {line}: {exc.message}") from None
            if errors is not None:
                errors.append((line, exc.message))
            continue
        out.append(Label(lab.criterion, lab.passed, lab.trace_id, lab.case_id, lab.run_id, lab.variant, lab.rep, line))
    return out


def labels_from_store(store: Any, criterion: str | None = None) -> list[Label]:
    """Labels from the review queue's ``human_labels`` table (one current label per trace
    and criterion; see shipyard.feedback.labels), read a page at a time."""
    try:
        from ..feedback.labels import iter_human_labels
    except ImportError:  # a build without the review queue: read the table if it is there
        iter_human_labels = None
    out = []
    try:
        if iter_human_labels is not None:
            rows = ((r["trace_id"], r["criterion"], r["label"]) for r in iter_human_labels(store, criterion))
            raw = list(rows)
        else:
            sql = "SELECT trace_id, criterion, label FROM human_labels" + (" WHERE criterion = ?" if criterion else "")
            with store._read() as cur:
                cur.execute(store.dialect.q(sql), (criterion,) if criterion else ())
                raw = cur.fetchall()
    except Exception:
        raise InvalidRequest("the store has no human labels to read (the review queue records them); "
                             "pass --labels FILE with {trace_id or case_id, criterion, label} rows") from None
    for tid, crit, label in raw:
        try:
            out.append(parse_label({"trace_id": tid, "criterion": crit, "label": label}))
        except ItemError:
            continue
    return out


# ---- versions ------------------------------------------------------------------------------

def _hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Registry:
    """Versioned criteria and judges."""

    def __init__(self, store: Any) -> None:
        self.store = store
        ensure_schema(store)
        self.q = store.dialect.q

    def criterion_version(self, name: str, description: str | None) -> int:
        with self.store._write() as cur:
            cur.execute(self.q("SELECT version, description FROM eval_criteria WHERE name = ? ORDER BY version DESC "
                               "LIMIT 1"), (name,))
            row = cur.fetchone()
            if row is not None and (description is None or row[1] == description):
                return int(row[0])
            version = 1 if row is None else int(row[0]) + 1
            cur.execute(self.q("INSERT INTO eval_criteria (name, version, description, created_at) VALUES (?, ?, ?, ?)"),
                        (name, version, description, time.time()))
            return version

    def judge_version(self, ev: Evaluator) -> int:
        spec = {k: v for k, v in ev.describe().items() if k != "name"}
        h = _hash(spec)
        with self.store._write() as cur:
            cur.execute(self.q("SELECT version, spec_hash FROM eval_judges WHERE name = ? ORDER BY version DESC LIMIT 1"),
                        (ev.name,))
            row = cur.fetchone()
            if row is not None and row[1] == h:
                return int(row[0])
            version = 1 if row is None else int(row[0]) + 1
            cur.execute(self.q("INSERT INTO eval_judges (name, version, criterion, spec, spec_hash, created_at) "
                               "VALUES (?, ?, ?, ?, ?, ?)"),
                        (ev.name, version, ev.criterion, json.dumps(spec, sort_keys=True, default=str), h, time.time()))
            return version

    def judges(self, criterion: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE j.criterion = ? ", (criterion,)) if criterion else ("", ())
        with self.store._read() as cur:
            cur.execute(self.q(
                "SELECT j.name, j.version, j.criterion, j.spec, j.created_at, a.alignment, a.kappa, a.agreement, a.n, "
                "a.selected, a.created_at FROM eval_judges j LEFT JOIN eval_alignments a ON a.alignment_id = ("
                "SELECT x.alignment_id FROM eval_alignments x WHERE x.judge = j.name AND x.judge_version = j.version "
                f"ORDER BY x.created_at DESC LIMIT 1) AND a.judge = j.name {where}ORDER BY j.criterion, j.name, "
                "j.version"), args)
            cols = ["judge", "version", "criterion", "spec", "created_at", "alignment", "kappa", "agreement", "n",
                    "selected", "aligned_at"]
            return [dict(zip(cols, r)) for r in cur.fetchall()]


# ---- verdicts ------------------------------------------------------------------------------

@dataclass
class JudgeReport:
    judge: str
    version: int
    criterion: str
    criterion_version: int
    n: int
    errors: int
    metrics: stats.Agreement
    unmatched: int = 0
    selected: bool = False
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {"judge": self.judge, "version": self.version, "criterion": self.criterion,
                "criterion_version": self.criterion_version, "n": self.n, "errors": self.errors,
                "unmatched": self.unmatched, "agreement": m.agreement, "kappa": m.kappa, "tpr": m.tpr, "tnr": m.tnr,
                "coverage": m.coverage, "false_failure_rate": m.false_failure_rate, "alignment": m.alignment,
                "confusion": {"tp": m.tp, "tn": m.tn, "fp": m.fp, "fn": m.fn}, "selected": self.selected,
                "disagreements": self.disagreements}


def _case_rows(sql: str, args: list[Any], label: Label) -> tuple[str, list[Any]]:
    """``sql`` narrowed to the label's variant and repeat, when it names them."""
    if label.variant:
        sql += " AND variant = ?"
        args.append(label.variant)
    if label.rep is not None:
        sql += " AND rep = ?"
        args.append(label.rep)
    return sql, args


def _stored_verdict(store: Any, q: Callable[[str], str], label: Label, judge: str,
                    run_id: str | None) -> tuple[str, Any] | None:
    """('ok', (passed, reason, error, trace_id)) | ('ambiguous', n) | None (no result)."""
    with store._read() as cur:
        if label.trace_id:
            cur.execute(q("SELECT passed, reason, error, trace_id FROM eval_scores WHERE trace_id = ? AND evaluator = ?"
                          + (" AND run_id = ?" if run_id else "")),
                        (label.trace_id, judge, *([run_id] if run_id else [])))
        else:
            run = label.run_id or run_id
            if run is None:
                return None
            sql, args = _case_rows("SELECT passed, reason, error, trace_id FROM eval_scores WHERE run_id = ? AND "
                                   "case_id = ? AND evaluator = ?", [run, label.case_id, judge], label)
            cur.execute(q(sql), args)
        rows = cur.fetchall()
    if not rows:
        return None
    if len(rows) > 1:
        return "ambiguous", len(rows)
    return "ok", rows[0]


def _output_for(store: Any, q: Callable[[str], str], label: Label, run_id: str | None) -> tuple[dict, str, str | None] | None:
    """(item, answer, trace id) of a labelled output: from the run's stored answer
    (case labels) or from the trace's recorded call."""
    from .calls import answer_text
    from .datasets import Datasets

    if label.case_id and (label.run_id or run_id):
        run = label.run_id or run_id
        sql, args = _case_rows("SELECT variant, output, trace_id FROM eval_results WHERE run_id = ? AND case_id = ? "
                               "AND status <> 'error'", [run, label.case_id], label)
        with store._read() as cur:
            cur.execute(q(sql), args)
            rows = cur.fetchall()
            cur.execute(q("SELECT dataset, dataset_version FROM eval_runs WHERE run_id = ?"), (run,))
            meta = cur.fetchone()
        if len(rows) != 1 or meta is None:
            return None
        items = Datasets(store).get_items(meta[0], meta[1], [label.case_id])
        item = items.get(label.case_id) or {"id": label.case_id, "input": {}}
        return item, rows[0][1] or "", rows[0][2]
    if label.trace_id:
        trace = store.get_trace(label.trace_id)
        if trace is None:
            return None
        llm = [s for s in trace["spans"] if s.get("kind") == "llm" and not str(s.get("name", "")).startswith("judge ")]
        if not llm:
            return None
        span = llm[0]
        body = span.get("input") or {}
        text = answer_text(span.get("output") if isinstance(span.get("output"), dict) else None)
        if text is None:
            return None
        item = {"id": label.trace_id, "input": {"messages": body.get("messages") or []}, "expected": None,
                "metadata": {}}
        return item, text, label.trace_id
    return None


async def align(
    store: Any,
    evaluators: list[Evaluator],
    labels: list[Label],
    *,
    criteria: dict[str, str] | None = None,
    run_id: str | None = None,
    rejudge: bool = False,
    caller: Any = None,
    base_dir: Path | None = None,
    concurrency: int = 8,
    source: str = "file",
) -> dict[str, Any]:
    """Measure every candidate judge against the labels; returns the report (and stores it)."""
    ensure_schema(store)
    q = store.dialect.q
    reg = Registry(store)
    alignment_id = f"align-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    by_criterion: dict[str, list[Label]] = {}
    for lab in labels:
        by_criterion.setdefault(lab.criterion, []).append(lab)
    ctx = EvalContext(caller=caller, base_dir=base_dir or Path.cwd(), run_id=alignment_id)
    sem = asyncio.Semaphore(concurrency)
    report: dict[str, Any] = {"alignment_id": alignment_id, "criteria": [], "missing": []}
    verdict_rows: list[tuple] = []
    live = run_id is None or rejudge
    for crit, labs in sorted(by_criterion.items()):
        judges = [ev for ev in evaluators if ev.criterion == crit and not ev.pairwise]
        if not judges:
            report["missing"].append({"criterion": crit, "labels": len(labs)})
            continue
        cver = reg.criterion_version(crit, (criteria or {}).get(crit))
        outputs: dict[str, Any] = {}
        if live:
            for lab in labs:
                outputs[lab.key] = await asyncio.to_thread(_output_for, store, q, lab, run_id)
        reports = []
        for ev in judges:
            jver = reg.judge_version(ev)

            async def verdict(lab: Label, ev: Evaluator = ev, outputs: dict[str, Any] = outputs
                              ) -> tuple[Label, bool | None, str | None, str | None, str | None]:
                """(label, judge passed, reason, error, trace id); error 'unmatched' = no output/result."""
                if not live:
                    found = await asyncio.to_thread(_stored_verdict, store, q, lab, ev.name, run_id)
                    if found is None:
                        return lab, None, None, "unmatched", lab.trace_id
                    if found[0] == "ambiguous":
                        return lab, None, None, "unmatched", lab.trace_id
                    passed, reason, error, tid = found[1]
                    if error:
                        return lab, None, reason, error, tid
                    if passed is None:
                        return lab, None, reason, "the judge gave no pass/fail verdict", tid
                    return lab, bool(passed), reason, None, tid
                got = outputs.get(lab.key)
                if got is None:
                    return lab, None, None, "unmatched", lab.trace_id
                item, text, tid = got
                case = Case(item=item, output=text, messages=(item.get("input") or {}).get("messages") or [],
                            trace_id=tid)
                async with sem:
                    try:
                        o = await ev.evaluate(case, ctx)
                    except Exception as exc:
                        return lab, None, None, f"evaluator crashed: {type(exc).__name__}: {exc}", tid
                if o.error:
                    return lab, None, o.reason, o.error, tid
                if o.passed is None:
                    return lab, None, o.reason, "the judge gave no pass/fail verdict", tid
                return lab, o.passed, o.reason, None, tid

            results = await asyncio.gather(*(verdict(lab) for lab in labs))
            pairs = []
            errors = unmatched = 0
            disagreements = []
            for lab, passed, reason, error, tid in results:
                if error == "unmatched":
                    unmatched += 1
                    continue
                verdict_rows.append((alignment_id, ev.name, lab.key, tid, int(lab.passed),
                                     None if passed is None else int(passed), reason, error))
                if error is not None or passed is None:
                    errors += 1
                    continue
                pairs.append((lab.passed, passed))
                if passed != lab.passed and len(disagreements) < 20:
                    disagreements.append({"key": lab.key, "human": "pass" if lab.passed else "fail",
                                          "judge": "pass" if passed else "fail", "reason": reason})
            reports.append(JudgeReport(ev.name, jver, crit, cver, len(pairs), errors, stats.agreement(pairs),
                                       unmatched, disagreements=disagreements))
        best = max(reports, key=lambda r: (r.n > 0, _nz(r.metrics.alignment), _nz(r.metrics.kappa),
                                           _nz(r.metrics.agreement), -r.errors))
        if best.n > 0:
            best.selected = True
        report["criteria"].append({"criterion": crit, "version": cver, "labels": len(labs),
                                   "selected": best.judge if best.selected else None,
                                   "judges": [r.as_dict() for r in reports]})
        _store_reports(store, q, alignment_id, reports, source)
    if verdict_rows:
        with store._write() as cur:
            cur.executemany(q("INSERT INTO eval_alignment_verdicts (alignment_id, judge, label_key, trace_id, human, "
                              "verdict, reason, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alignment_id, "
                              "judge, label_key) DO NOTHING"), verdict_rows)
    return report


def _nz(x: float | None) -> float:
    return -2.0 if x is None else x


def _store_reports(store: Any, q: Callable[[str], str], alignment_id: str, reports: list[JudgeReport], source: str) -> None:
    now = time.time()
    rows = []
    for r in reports:
        m = r.metrics
        rows.append((alignment_id, r.judge, r.version, r.criterion, r.criterion_version, now, source, r.n, r.errors,
                     m.agreement, m.kappa, m.tpr, m.tnr, m.coverage, m.false_failure_rate, m.alignment, int(r.selected)))
    with store._write() as cur:
        cur.executemany(q(
            "INSERT INTO eval_alignments (alignment_id, judge, judge_version, criterion, criterion_version, created_at, "
            "source, n, errors, agreement, kappa, tpr, tnr, coverage, false_failure_rate, alignment, selected) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"), rows)


def render_alignment(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    from .report import num, pct

    for c in report["criteria"]:
        t = Table(title=f"Criterion {c['criterion']} (v{c['version']}): {c['labels']} human labels",
                  title_justify="left")
        for col in ("judge", "n", "errors", "agreement", "Cohen's κ", "TPR", "TNR", "coverage", "false-fail rate",
                    "alignment", ""):
            t.add_column(col, justify="left" if col in ("judge", "") else "right")
        for j in c["judges"]:
            t.add_row(f"{j['judge']} v{j['version']}", str(j["n"]), str(j["errors"]) + (
                f" (+{j['unmatched']} unmatched)" if j["unmatched"] else ""), pct(j["agreement"]), num(j["kappa"]),
                pct(j["tpr"]), pct(j["tnr"]), pct(j["coverage"]), pct(j["false_failure_rate"]), num(j["alignment"]),
                "[bold green]★ selected[/]" if j["selected"] else "")
        console.print(t)
        for j in c["judges"]:
            if j["disagreements"]:
                console.print(f"[bold]{j['judge']}[/] disagrees with humans on {len(j['disagreements'])} shown case(s):")
                for d in j["disagreements"][:5]:
                    console.print(f"  {d['key']}: human {d['human']}, judge {d['judge']} — {d['reason'] or ''}")
    for m in report["missing"]:
        console.print(f"[yellow]criterion {m['criterion']!r} ({m['labels']} labels): no evaluator in the spec has "
                      "this criterion[/]")
