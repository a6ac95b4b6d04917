"""The ``shipyard`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Sequence

import orjson

from .cli_output import Column, fail, fmt, fmt_time, print_json, print_table
from .config import load_config
from .errors import ConfigError, ShipyardError
from .timeparse import parse_duration, parse_iso


def parse_since(value: str) -> float:
    """'30m', '24h', '7d' -> a unix timestamp that long ago; or an ISO date/time."""
    ago = parse_duration(value)
    if ago is not None:
        return time.time() - ago
    when = parse_iso(value)
    if when is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 24h or 7d, or an ISO time; got {value!r}")
    return when


def _config_source(args: argparse.Namespace) -> str | None:
    return args.config or os.environ.get("SHIPYARD_CONFIG") or None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .engine import Engine
    from .server.app import create_app

    cfg = load_config(_config_source(args))
    host = args.host or cfg.server.host
    port = args.port if args.port is not None else cfg.server.port
    engine = Engine(cfg)
    app = create_app(engine)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    aliases = ", ".join(sorted(engine.routers)) or "none"
    print(f"shipyard: serving OpenAI-compatible API on http://{host}:{port}/v1 (models: {aliases}; "
          f"store: {cfg.store})", file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=args.graceful_timeout,
        server_header=False,
    )
    return 0


def _store_url(source: str | None) -> str:
    """The store URL of a config, reading only the ``store`` key (so reading traces does
    not need the providers' secrets in the environment)."""
    if source is None:
        return load_config(None).store
    from .config import interpolate_env, read_yaml_file

    data = read_yaml_file(source)
    store = data.get("store", "sqlite:///shipyard.db") if isinstance(data, dict) else None
    if not isinstance(store, str):
        raise ConfigError("invalid configuration: store: must be a URL string")
    return interpolate_env(store, "store")


def _store(args: argparse.Namespace):
    from .store import open_store

    url = args.store or _store_url(_config_source(args))
    store = open_store(url)
    if store is None:
        raise ConfigError("no store is configured (store: none)")
    return store


TRACE_COLUMNS = (Column("TRACE ID", 32), Column("START (UTC)", 19), Column("STATUS", 6),
                 Column("ALIAS", 12, clip=True), Column("MODEL", 28, clip=True), Column("MS", 8, ">"),
                 Column("TOK IN", 6, ">"), Column("TOK OUT", 7, ">"), Column("COST $", 10, ">"))


def cmd_traces_list(args: argparse.Namespace) -> int:
    from .store import TraceFilter

    store = _store(args)
    f = TraceFilter(start=args.since, alias=args.alias, model=args.model, user_id=args.user,
                    session_id=args.session, status=args.status, limit=args.limit, cursor=args.cursor)
    rows, cursor = store.list_traces(f)
    if args.json:
        print_json({"data": rows, "next_cursor": cursor}, indent=False)
        return 0
    print_table(TRACE_COLUMNS, [
        [r["trace_id"], fmt_time(r["start_time"]), r["status"], fmt(r["alias"]), fmt(r["model"]),
         fmt(r["duration_ms"], ".1f"), fmt(r["input_tokens"]), fmt(r["output_tokens"]), fmt(r["cost_usd"], ".6f")]
        for r in rows], empty="(no traces in this window)")
    if cursor:
        print(f"more: shipyard traces list --cursor {cursor}")
    return 0


def cmd_traces_show(args: argparse.Namespace) -> int:
    store = _store(args)
    trace = store.get_trace(args.trace_id)
    if trace is None:
        return fail(f"trace {args.trace_id} not found")
    if args.json:
        print_json(trace)
        return 0
    print(f"trace {trace['trace_id']}  status={trace['status']}  spans={trace['span_count']}  "
          f"start={fmt_time(trace['start_time'])}  duration_ms={fmt(trace['duration_ms'], '.1f')}  "
          f"cost_usd={fmt(trace['cost_usd'], '.6f')}")
    for s in trace["spans"]:
        print(f"\n- span {s['span_id']} [{s['kind']}] {s['name']}  status={s['status']}  "
              f"duration_ms={fmt(s['duration_ms'], '.1f')}")
        for key in ("alias", "provider", "model", "response_model", "user_id", "session_id",
                    "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "ttft_ms", "error"):
            if s.get(key) is not None:
                print(f"    {key}: {s[key]}")
        attempts = (s.get("attributes") or {}).get("attempts") or []
        for a in attempts:
            print(f"    attempt {a['provider']}/{a['model']}: {a['outcome']} "
                  f"({a['latency_ms']} ms){' — ' + a['error'] if a.get('error') else ''}")
        if s.get("input") is not None:
            print("    input:  " + orjson.dumps(s["input"]).decode()[:2000])
        if s.get("output") is not None:
            print("    output: " + orjson.dumps(s["output"]).decode()[:2000])
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(_config_source(args))
    print(f"ok: {len(cfg.providers)} providers, {len(cfg.models)} models, store {cfg.store}, "
          f"config hash {cfg.config_hash()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shipyard", description="Shipyard: LLM gateway and production loop.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", "-c", help="YAML config (default: $SHIPYARD_CONFIG or the embedded default)")

    s = sub.add_parser("serve", help="serve the OpenAI-compatible API")
    with_config(s)
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--graceful-timeout", type=int, default=30, help="seconds to drain in-flight requests")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("traces", help="read recorded traces")
    tsub = t.add_subparsers(dest="traces_command", required=True)
    tl = tsub.add_parser("list", help="list recent traces, newest first")
    with_config(tl)
    tl.add_argument("--store", help="store URL (default: the config's store)")
    tl.add_argument("--since", type=parse_since, default=None, help="e.g. 1h, 24h, 7d (default 7d)")
    tl.add_argument("--alias")
    tl.add_argument("--model")
    tl.add_argument("--user")
    tl.add_argument("--session")
    tl.add_argument("--status", choices=["ok", "error"])
    tl.add_argument("--limit", type=int, default=20)
    tl.add_argument("--cursor")
    tl.add_argument("--json", action="store_true")
    tl.set_defaults(func=cmd_traces_list)
    ts = tsub.add_parser("show", help="show one trace with its spans")
    with_config(ts)
    ts.add_argument("trace_id")
    ts.add_argument("--store")
    ts.add_argument("--json", action="store_true")
    ts.set_defaults(func=cmd_traces_show)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    cc = csub.add_parser("check", help="validate a config file and exit")
    with_config(cc)
    cc.set_defaults(func=cmd_config_check)

    # ---- datasets and evals (shipyard/evals/cli.py): `shipyard datasets ...`, `shipyard eval ...`
    from .evals.cli import add_commands as add_eval_commands

    add_eval_commands(sub, with_config, parse_since)
    # ---- end datasets and evals
    # ---- releases (shipyard/releases/cli.py): `shipyard prompts|shadow|experiments|release ...`
    from .releases.cli import add_commands as add_release_commands

    add_release_commands(sub, with_config)
    # ---- end releases
    # ---- drift (shipyard/drift/cli.py): `shipyard drift report|check|probe`
    from .drift.cli import add_commands as add_drift_commands

    add_drift_commands(sub, with_config)
    # ---- end drift
    # ---- feedback, review, export (shipyard/feedback/cli.py): `shipyard feedback|review|export ...`
    from .feedback.cli import add_commands as add_feedback_commands

    add_feedback_commands(sub, with_config, parse_since)
    # ---- end feedback, review, export
    # ---- access (shipyard/access/cli.py): `shipyard keys create|list|show|update|rotate|revoke`
    from .access.cli import add_commands as add_key_commands

    add_key_commands(sub, with_config)
    # ---- end access
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ShipyardError as exc:
        return fail(exc, 2)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
