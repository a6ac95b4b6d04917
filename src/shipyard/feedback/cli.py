"""``shipyard feedback ...``, ``shipyard review ...`` and ``shipyard export ...`` (docs/feedback.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..cli_output import Column, fail, fmt, fmt_time, pct, print_json, print_table


def _store(args: argparse.Namespace) -> Any:
    from ..cli import _store as open_configured_store

    return open_configured_store(args)


FEEDBACK_COLUMNS = (Column("GIVEN (UTC)", 19), Column("TRACE ID", 32), Column("KIND", 11), Column("VALUE", 6, ">"),
                    Column("SRC", 9), Column("ALIAS", 12, clip=True), Column("TEXT / LABEL"))


def _stats_columns(by: str) -> tuple[Column, ...]:
    return (Column(by.upper(), 28, clip=True), Column("EVENTS", 6, ">"), Column("TRACES", 6, ">"),
            Column("POS", 6, ">"), Column("NEG", 6, ">"), Column("SCORE", 5, ">"))


# ---- feedback -----------------------------------------------------------------------------

def cmd_feedback_add(args: argparse.Namespace) -> int:
    from .model import parse_feedback
    from .service import FeedbackService

    body: dict[str, Any] = {"trace_id": args.trace_id, "completion_id": args.completion_id, "kind": args.kind,
                            "value": args.value, "text": args.text, "label": args.label, "source": args.source,
                            "user_id": args.user, "idempotency_key": args.idempotency_key}
    if args.scale:
        body["scale"] = [float(x) for x in args.scale.split(",")]
    store = _store(args)
    try:
        row, created = FeedbackService(store).record(parse_feedback({k: v for k, v in body.items() if v is not None}),
                                                     "cli")
    finally:
        store.close()
    if args.json:
        print_json(row)
    else:
        print(f"{'recorded' if created else 'already recorded (same idempotency key)'}: {row['kind']} on trace "
              f"{row['trace_id']} (feedback id {row['id']})")
    return 0


def cmd_feedback_list(args: argparse.Namespace) -> int:
    from .service import FeedbackService

    store = _store(args)
    try:
        rows = FeedbackService(store).list_feedback(trace_id=args.trace, start=args.since, kind=args.kind,
                                                    source=args.source, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print_json(rows)
        return 0
    print_table(FEEDBACK_COLUMNS, [
        [fmt_time(r["created_at"]), r["trace_id"], r["kind"], "" if r["value"] is None else f"{r['value']:g}",
         r["source"], r["alias"] or "-", (r["label"] or r["text"] or "").replace("\n", " ")[:60]]
        for r in rows], empty="(no feedback)")
    return 0


def cmd_feedback_stats(args: argparse.Namespace) -> int:
    from ..timeparse import parse_duration
    from .stats import feedback_stats

    store = _store(args)
    end = time.time() + 60
    start = args.since if args.since is not None else end - 7 * 86400
    bucket = int(parse_duration(args.bucket) or 86400)
    try:
        data = feedback_stats(store, start, end, bucket, args.by, source=args.source)
    finally:
        store.close()
    if args.json:
        print_json(data)
        return 0
    s = data["summary"]
    print(f"feedback {fmt_time(start)} -> {fmt_time(end)}: {s['total']} events on {s['traces']} traces, "
          f"{pct(s['positive_rate'])} positive, {pct(s['negative_rate'])} negative")
    print_table(_stats_columns(args.by), [
        [r["group"], r["total"], r["traces"], pct(r["positive_rate"]), pct(r["negative_rate"]),
         fmt(r["mean_score"], ".2f")]
        for r in data["totals"]])
    for o in data["outcomes"]:
        print(f"outcome {o['name']} @ {o['group']}: mean {o['mean']:g} over {o['count']} ({o['sessions']} sessions)")
    return 0


# ---- review -------------------------------------------------------------------------------

def _print_queue(q: dict[str, Any]) -> None:
    print(f"review queue {q['day']}: {len(q['items'])} traces ({q['reviewed']} reviewed) sampled from "
          f"{q['candidates']} calls between {fmt_time(q['window_start'])} and {fmt_time(q['window_end'])}")
    for i in q["items"]:
        print(f"  {i['position']:>3}. {i['trace_id']}  {(i['alias'] or '-')[:14]:14}  {i['verdict'] or '-':4}  "
              f"{', '.join(i['reasons'])}")


def cmd_review_sample(args: argparse.Namespace) -> int:
    from ..timeparse import parse_duration
    from .queue import build_queue

    window = parse_duration(args.window)
    if window is None:
        return fail(f"--window: expected a duration like 24h or 7d, got {args.window!r}", 2)
    store = _store(args)
    try:
        q = build_queue(store, args.date, args.size, window_s=window, force=args.force, created_by="cli")
    finally:
        store.close()
    if args.json:
        print_json(q)
        return 0
    if not q["created"]:
        print(f"the queue of {q['day']} was already built (use --force to sample it again, keeping reviewed items)")
    _print_queue(q)
    return 0


def cmd_review_show(args: argparse.Namespace) -> int:
    from .queue import get_queue
    from .when import parse_day

    store = _store(args)
    try:
        day = parse_day(args.date)
        q = get_queue(store, day)
    finally:
        store.close()
    if q is None:
        return fail(f"no review queue for {day} (build it: shipyard review sample --date {day})")
    if args.json:
        print_json(q)
    else:
        _print_queue(q)
    return 0


def cmd_review_label(args: argparse.Namespace) -> int:
    from .labels import set_review

    store = _store(args)
    try:
        out = set_review(store, args.trace_id, args.verdict, args.tags, args.note, args.reviewer)
    finally:
        store.close()
    if args.json:
        print_json(out)
    else:
        print(f"labelled {out['trace_id']}: {out['verdict']}" + (f" ({', '.join(out['tags'])})" if out["tags"] else ""))
    return 0


def cmd_review_export_labels(args: argparse.Namespace) -> int:
    from .labels import export_labels

    store = _store(args)
    try:
        if args.out == "-":
            n = export_labels(store, sys.stdout, args.criterion, args.since, include_implied=not args.no_implied,
                              full=args.full)
        else:
            path = Path(args.out)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                n = export_labels(store, fh, args.criterion, args.since, include_implied=not args.no_implied,
                                  full=args.full)
            tmp.replace(path)
    finally:
        store.close()
    if args.out != "-":
        print(f"wrote {n} labels to {args.out}" + ("" if n else " (no human labels yet: review some traces first)"),
              file=sys.stderr)
    return 0


# ---- export -------------------------------------------------------------------------------

def cmd_export_finetune(args: argparse.Namespace) -> int:
    from ..export.finetune import export_finetune, parse_where, render_summary

    where = parse_where(args.where)
    if args.since and "since" not in where:
        where["since"] = args.since
    store = _store(args)
    try:
        summary = export_finetune(store, args.out, args.format, where=where, val_fraction=args.val_fraction,
                                  reasons=args.reasons.split(",") if args.reasons else None)
    finally:
        store.close()
    if args.json:
        print_json(summary.as_dict())
    else:
        print(render_summary(summary))
    if summary.written == 0:
        return fail("no matching rows: nothing written")
    if not args.json:
        print(f"wrote {', '.join(summary.files)} to {args.out}")
    return 0


def add_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], None],
                 parse_since: Callable[[str], float]) -> None:
    from .model import KINDS, KIND_ALIASES, SOURCES
    from .stats import DIMENSIONS

    def common(sp: argparse.ArgumentParser) -> None:
        with_config(sp)
        sp.add_argument("--store", help="store URL (default: the config's store)")

    f = sub.add_parser("feedback", help="feedback on recorded calls (docs/feedback.md)")
    fsub = f.add_subparsers(dest="feedback_command", required=True)
    fa = fsub.add_parser("add", help="record feedback on a trace (as an annotator, a script, a judge)")
    common(fa)
    fa.add_argument("trace_id", nargs="?", help="the trace (or give --completion-id)")
    fa.add_argument("--completion-id")
    fa.add_argument("--kind", required=True, choices=sorted(set(KINDS) | set(KIND_ALIASES)))
    fa.add_argument("--value", help="thumbs: up|down; score: a number; label: the category")
    fa.add_argument("--scale", help="score scale as MIN,MAX (default 0,1)")
    fa.add_argument("--text", help="comment, corrected output, or the edited final text")
    fa.add_argument("--label")
    fa.add_argument("--source", default="annotator", choices=SOURCES)
    fa.add_argument("--user")
    fa.add_argument("--idempotency-key")
    fa.add_argument("--json", action="store_true")
    fa.set_defaults(func=cmd_feedback_add)
    fl = fsub.add_parser("list", help="feedback events, newest first")
    common(fl)
    fl.add_argument("--trace")
    fl.add_argument("--since", type=parse_since, default=None, help="given since: 1h, 7d, ISO time")
    fl.add_argument("--kind", choices=KINDS)
    fl.add_argument("--source", choices=SOURCES)
    fl.add_argument("--limit", type=int, default=50)
    fl.add_argument("--json", action="store_true")
    fl.set_defaults(func=cmd_feedback_list)
    fs = fsub.add_parser("stats", help="feedback rates by alias, model, prompt version or route")
    common(fs)
    fs.add_argument("--by", choices=DIMENSIONS, default="alias")
    fs.add_argument("--since", type=parse_since, default=None, help="calls since (default 7d)")
    fs.add_argument("--bucket", default="1d", help="bucket for the time series (--json), e.g. 1h, 1d")
    fs.add_argument("--source", choices=SOURCES)
    fs.add_argument("--json", action="store_true")
    fs.set_defaults(func=cmd_feedback_stats)

    r = sub.add_parser("review", help="the daily review queue and human labels (docs/feedback.md)")
    rsub = r.add_subparsers(dest="review_command", required=True)
    rs = rsub.add_parser("sample", help="build (materialise) a day's review queue")
    common(rs)
    rs.add_argument("--date", default=None, help="YYYY-MM-DD (UTC; default today)")
    rs.add_argument("--size", type=int, default=50)
    rs.add_argument("--window", default="24h", help="how far back from the end of the day (or now) to sample")
    rs.add_argument("--force", action="store_true", help="sample again, keeping the items already reviewed")
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=cmd_review_sample)
    rw = rsub.add_parser("show", help="show a day's queue and what was reviewed")
    common(rw)
    rw.add_argument("--date", default=None)
    rw.add_argument("--json", action="store_true")
    rw.set_defaults(func=cmd_review_show)
    rl = rsub.add_parser("label", help="label a trace pass or fail (as in the review UI)")
    common(rl)
    rl.add_argument("trace_id")
    rl.add_argument("--verdict", required=True, choices=["pass", "fail"])
    rl.add_argument("--tags", default="", help="failure modes, comma-separated")
    rl.add_argument("--note")
    rl.add_argument("--reviewer")
    rl.add_argument("--json", action="store_true")
    rl.set_defaults(func=cmd_review_label)
    re_ = rsub.add_parser("export-labels", help="human labels as JSONL for `shipyard eval align --labels`")
    common(re_)
    re_.add_argument("--out", required=True, help="a .jsonl file, or - for stdout")
    re_.add_argument("--criterion")
    re_.add_argument("--since", default=None, help="labels changed since (7d, ISO time)")
    re_.add_argument("--no-implied", action="store_true", help="only labels a reviewer set (no implied passes)")
    re_.add_argument("--full", action="store_true", help="every column, not just trace_id, criterion, label")
    re_.set_defaults(func=cmd_review_export_labels)

    e = sub.add_parser("export", help="export recorded traffic (docs/feedback.md)")
    esub = e.add_subparsers(dest="export_command", required=True)
    ef = esub.add_parser("finetune", help="fine-tuning JSONL from accepted or corrected outputs")
    common(ef)
    ef.add_argument("--out", required=True, help="output directory")
    ef.add_argument("--format", default="openai", choices=["openai", "anthropic", "sharegpt"])
    ef.add_argument("--where", action="append", default=[],
                    help="filter key=value (repeat or comma-separate): alias, model, route, prompt, source, user, "
                         "session, since, until")
    ef.add_argument("--since", default=None, help="calls since (default 30d; same as --where since=...)")
    ef.add_argument("--val-fraction", type=float, default=0.1, help="share for validation.jsonl (by hash)")
    ef.add_argument("--reasons", help="include only: corrected,accepted,thumbs_up,reviewed_pass")
    ef.add_argument("--json", action="store_true", help="print the summary as JSON")
    ef.set_defaults(func=cmd_export_finetune)

