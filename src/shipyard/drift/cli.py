"""``shipyard drift report | check | probe``.

    shipyard drift report --reference dataset:support --current 7d
    shipyard drift report --reference window:30d..7d --current 7d --embedder minilm --out r.html
    shipyard drift check -c shipyard.yaml            # the config's drift block, once
    shipyard drift probe --current 7d --sample 20 --repeats 3 -c shipyard.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, Callable

import orjson

from ..errors import ConfigError


def _threshold(value: str) -> tuple[str, float]:
    key, sep, num = value.partition("=")
    try:
        if not sep:
            raise ValueError
        return key.strip(), float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, e.g. domain_auc=0.7; got {value!r}") from None


def _engine(args: argparse.Namespace, store: Any) -> Any:
    """An engine from the full config (for alias embedders and the probe)."""
    from ..cli import _config_source
    from ..engine import Engine

    return Engine(_config_source(args), store=store)


def _summary_line(s: dict[str, Any]) -> str:
    ref, cur = s["reference"], s["current"]
    head = (f"{s['verdict']}: {ref['spec']} ({ref['records']} records) vs {cur['spec']} "
            f"({cur['records']} records)")
    if s["drifted"]:
        head += f"; drifted: {', '.join(s['drifted'])}"
    if s.get("reason"):
        head += f"; {s['reason']}"
    return head


def _write(path: str, text: str) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


def cmd_drift_report(args: argparse.Namespace) -> int:
    from ..cli import _store
    from .analyze import run_analysis
    from .embedders import BUILTIN, get_embedder
    from .report import render_html

    store = _store(args)
    engine = None
    embedder: Any = args.embedder
    try:
        if not args.no_semantic and args.embedder not in BUILTIN:
            engine = _engine(args, None)
            embedder = get_embedder(args.embedder, engine=engine)
        summary = run_analysis(store, args.reference, args.current, embedder=embedder,
                               thresholds=dict(args.threshold or []), max_semantic=args.max_semantic,
                               max_records=args.max_records, alias=args.alias, semantic=not args.no_semantic)
        if args.probe:
            summary["probe"] = _probe(args, store, summary["current"]["start"], summary["current"]["end"],
                                      args.probe, summary["thresholds"]["nondeterminism"])
    finally:
        store.close()
        close = getattr(embedder, "close", None) if engine is not None else None
        if close is not None:
            close()
    out = args.out
    json_out = args.json or str(Path(out).with_suffix(".json"))
    _write(out, render_html(summary))
    _write(json_out, orjson.dumps(summary, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    print(_summary_line(summary))
    print(f"report: {out}\nsummary: {json_out}")
    return 1 if args.fail_on_drift and summary["verdict"] == "drift" else 0


def _probe(args: argparse.Namespace, store: Any, start: float | None, end: float | None, n: int,
           threshold: float) -> dict[str, Any]:
    from .probe import run_probe, sample_inputs

    if start is None or end is None:
        raise ConfigError("the probe re-runs production inputs: --current must be a window, not a dataset")
    from ..cli import _store

    items = sample_inputs(store, start, end, n, alias=args.alias)
    engine = _engine(args, _store(args))  # its own store: the re-runs are recorded (marked as probe calls)

    async def go() -> dict[str, Any]:
        await engine.start()
        try:
            return await run_probe(engine, items, repeats=args.repeats, threshold=threshold)
        finally:
            await engine.close()

    return asyncio.run(go())


def cmd_drift_probe(args: argparse.Namespace) -> int:
    from ..cli import _store
    from .spec import parse_spec
    from .thresholds import DEFAULTS

    spec = parse_spec(args.current, param="current")
    if spec.kind != "window":
        raise ConfigError("the probe re-runs production inputs: --current must be a window, not a dataset")
    store = _store(args)
    try:
        result = _probe(args, store, spec.start, spec.end, args.sample, DEFAULTS["nondeterminism"])
    finally:
        store.close()
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if args.json:
        _write(args.json, text + "\n")
    else:
        sys.stdout.write(text + "\n")
    print(f"{result['verdict']}: outputs changed for {result['changed']} of {result['probed']} inputs "
          f"re-run {result['repeats']} times", file=sys.stderr)
    return 0


def cmd_drift_check(args: argparse.Namespace) -> int:
    """The config's drift block, once: prints the summary line (and --json), posts the
    webhook when drifted and --webhook is given."""
    from ..cli import _store
    from ..config import load_config
    from .analyze import run_analysis
    from .schedule import alert_payload, post_webhook

    from ..cli import _config_source

    d = load_config(_config_source(args)).drift
    if not d.reference:
        raise ConfigError("drift.reference: required key is missing (the check compares the last drift.window "
                          "of traffic with it)")
    store = _store(args)
    try:
        summary = run_analysis(store, d.reference, d.window, thresholds=d.thresholds)
    finally:
        store.close()
    if args.json:
        _write(args.json, orjson.dumps(summary, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    print(_summary_line(summary))
    if args.webhook and d.webhook_url and summary["verdict"] == "drift":
        ok = asyncio.run(post_webhook(d.webhook_url, alert_payload(summary, "drift.detected")))
        print("webhook: " + ("sent" if ok else "failed"), file=sys.stderr)
    return 1 if summary["verdict"] == "drift" else 0


def add_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], None]) -> None:
    d = sub.add_parser("drift", help="compare production traffic with a reference (eval dataset or past window)")
    dsub = d.add_subparsers(dest="drift_command", required=True)

    r = dsub.add_parser("report", help="write an HTML report and a JSON summary")
    with_config(r)
    r.add_argument("--store", help="store URL (default: the config's store)")
    r.add_argument("--reference", required=True,
                   help="dataset:NAME[@VERSION][:SPLIT] or window:FROM..TO (e.g. window:30d..7d)")
    r.add_argument("--current", default="7d", help="the current window: 7d, 24h, window:FROM..TO (default 7d)")
    r.add_argument("--alias", help="only llm calls of this alias")
    r.add_argument("--embedder", default="light",
                   help="light (default, no model), minilm (extra 'embeddings') or alias:NAME (an embeddings alias)")
    r.add_argument("--max-semantic", type=int, default=2000,
                   help="at most this many records per window for the semantic part (uniform sample; default 2000)")
    r.add_argument("--max-records", type=int, default=None, help="read at most this many records per window")
    r.add_argument("--no-semantic", action="store_true", help="structural descriptors only")
    r.add_argument("--threshold", action="append", type=_threshold, metavar="NAME=VALUE",
                   help="override a threshold (repeatable), e.g. domain_auc=0.7; see docs/drift.md")
    r.add_argument("--probe", type=int, default=0, metavar="N",
                   help="also re-run N production inputs through the gateway (nondeterminism probe)")
    r.add_argument("--repeats", type=int, default=3, help="re-runs per probed input (default 3)")
    r.add_argument("--out", default="drift-report.html", help="HTML report path (default drift-report.html)")
    r.add_argument("--json", help="JSON summary path (default: the report's path with .json)")
    r.add_argument("--fail-on-drift", action="store_true", help="exit 1 when the verdict is drift")
    r.set_defaults(func=cmd_drift_report)

    c = dsub.add_parser("check", help="run the config's drift block once (exit 1 on drift)")
    with_config(c)
    c.add_argument("--store", help="store URL (default: the config's store)")
    c.add_argument("--json", help="also write the JSON summary here")
    c.add_argument("--webhook", action="store_true", help="post the alert to drift.webhook_url when drifted")
    c.set_defaults(func=cmd_drift_check)

    p = dsub.add_parser("probe", help="re-run sampled production inputs N times; how often do outputs change?")
    with_config(p)
    p.add_argument("--store", help="store URL (default: the config's store)")
    p.add_argument("--current", default="7d", help="the window to sample inputs from (default 7d)")
    p.add_argument("--alias", help="only llm calls of this alias")
    p.add_argument("--sample", type=int, default=20, help="inputs to re-run (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="re-runs per input (default 3)")
    p.add_argument("--json", help="write the result here instead of stdout")
    p.set_defaults(func=cmd_drift_probe)
