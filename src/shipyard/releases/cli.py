"""``shipyard prompts | shadow | experiments | release``: the release commands.

They read and write the store directly (the config's ``store``, or ``--store``), reading
only the blocks of the config they need, so provider secrets need not be set. A running
server sees changes within ``prompts.refresh_s``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..cli_output import Column, fail, fmt, fmt_time, pct, print_json, print_table
from ..errors import ConfigError, GatewayError

PROMPT_COLUMNS = (Column("NAME", 32, clip=True), Column("LATEST", 6, ">"), Column("UPDATED (UTC)", 19),
                  Column("LABELS"))
AUDIT_COLUMNS = (Column("WHEN (UTC)", 19), Column("WHO", 14, clip=True), Column("ACTION", 18, clip=True),
                 Column("PROMPT", 20, clip=True), Column("LABEL", 12, clip=True), Column("VERSIONS", 12),
                 Column("GATE"))
SHADOW_COLUMNS = (Column("ALIAS", 14, clip=True), Column("CANDIDATE", 26, clip=True), Column("N", 5, ">"),
                  Column("ERR", 4, ">"), Column("EXACT", 6, ">"), Column("JSON=", 6, ">"), Column("SIMIL", 5, ">"),
                  Column("JUDGE", 5, ">"), Column("MS CAND/PROD", 15, ">"), Column("COST CAND/PROD $", 22, ">"))
VARIANT_COLUMNS = (Column("VARIANT", 16, clip=True), Column("WEIGHT", 6, ">"), Column("N", 6, ">"),
                   Column("UNITS", 6, ">"), Column("SUCCESS", 8, ">"), Column("EVAL PASS", 9, ">"),
                   Column("FEEDBACK", 8, ">"), Column("MS", 8, ">"), Column("COST $", 10, ">"))


# ---- helpers ---------------------------------------------------------------------------------
def _raw_config(args: argparse.Namespace) -> dict[str, Any]:
    from ..config import read_yaml_file

    source = getattr(args, "config", None) or os.environ.get("SHIPYARD_CONFIG") or None
    if source is None:
        return {}
    data = read_yaml_file(source)
    if not isinstance(data, dict):
        raise ConfigError("invalid configuration: the top level must be a mapping")
    return data


def _block(args: argparse.Namespace, key: str, model: Any) -> Any:
    from pydantic import ValidationError

    from ..config import format_validation_error, interpolate_env

    raw = _raw_config(args).get(key) or {}
    try:
        return model.model_validate(interpolate_env(raw, key))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, key)) from None


def _registry(args: argparse.Namespace) -> Any:
    from ..cli import _store
    from .config import PromptsConfig
    from .registry import Registry
    from .store import ReleaseStore

    raw = _raw_config(args)
    aliases = (set(raw.get("models") or {}) | set(raw.get("routers") or {})) if raw.get("models") else None
    return Registry(ReleaseStore(_store(args)), _block(args, "prompts", PromptsConfig), aliases=aliases)


def _actor(args: argparse.Namespace) -> str:
    if getattr(args, "by", None):
        return args.by
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:
        return "unknown"


def _friendly(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A GatewayError (unknown prompt, bad input, rejected promotion) is exit code 1, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except GatewayError as exc:
            return fail(exc.message)

    return run


def _load_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'model' and 'messages'")
    return data


# ---- prompts ---------------------------------------------------------------------------------
def cmd_prompts_list(args: argparse.Namespace) -> int:
    rows = _registry(args).rs.list_prompts(limit=args.limit)
    if args.json:
        print_json({"data": rows})
        return 0
    print_table(PROMPT_COLUMNS, [
        [r["name"], fmt(r["latest"]), fmt_time(r["updated_at"]),
         ", ".join(f"{k}=v{v}" for k, v in sorted(r["labels"].items())) or "-"]
        for r in rows], empty="(no prompts)")
    return 0


def cmd_prompts_show(args: argparse.Namespace) -> int:
    reg = _registry(args)
    info = reg.get(args.name)
    v = reg.version(args.name, int(args.version) if args.version and args.version.isdigit() else args.version) \
        if info["latest"] else None
    if args.json:
        print_json({**info, "version": v.to_dict() if v else None})
        return 0
    print(f"prompt {info['name']}  versions={info['versions']}  latest=v{fmt(info['latest'])}")
    if info.get("description"):
        print(f"  {info['description']}")
    for label, lv in sorted(info["labels"].items()):
        print(f"  label {label} -> v{lv['version']}  (moved {fmt_time(lv['updated_at'])} by {lv['updated_by'] or '-'})")
    if v is not None:
        print(f"\nversion {v.version}  model={v.model}  created {fmt_time(v.created_at)} by {v.created_by or '-'}"
              + (f"\n  note: {v.note}" if v.note else ""))
        print(f"  variables: {', '.join(v.variables) or '-'}")
        if v.params:
            print("  params: " + orjson.dumps(v.params).decode())
        if v.response_schema is not None:
            print("  response_schema: " + orjson.dumps(v.response_schema).decode())
        for m in v.messages:
            print(f"\n  [{m['role']}]")
            content = m["content"] if isinstance(m["content"], str) else orjson.dumps(m["content"]).decode()
            for line in content.splitlines() or [""]:
                print("    " + line)
    return 0


def cmd_prompts_create(args: argparse.Namespace) -> int:
    body = _load_file(args.file)
    body.pop("name", None)
    if args.label:
        body["labels"] = list(dict.fromkeys([*(body.get("labels") or []), *args.label]))
    if args.note is not None:
        body["note"] = args.note
    if args.description is not None:
        body["description"] = args.description
    v = _registry(args).create_version(args.name, body, _actor(args), force=args.force)
    if args.json:
        print_json(v.to_dict())
    else:
        labels = ", ".join(body.get("labels") or []) or "no labels"
        print(f"created {v.name} version {v.version} ({labels}); variables: {', '.join(v.variables) or 'none'}")
    return 0


def cmd_prompts_label(args: argparse.Namespace) -> int:
    row = _registry(args).set_label(args.name, args.label, args.version, _actor(args), force=args.force)
    print(f"{args.name}: label {args.label} -> v{args.version}"
          + (f" (was v{row['from_version']})" if row.get("from_version") else "")
          + (" [forced]" if row["action"].endswith("forced") else ""))
    return 0


def cmd_prompts_unlabel(args: argparse.Namespace) -> int:
    row = _registry(args).remove_label(args.name, args.label, _actor(args), force=args.force)
    print(f"{args.name}: label {args.label} removed (was v{row['from_version']})")
    return 0


def cmd_prompts_diff(args: argparse.Namespace) -> int:
    sel = (lambda s: int(s) if s.isdigit() else s)
    out = _registry(args).diff(args.name, sel(args.a), sel(args.b), args.context)
    if args.json:
        print_json(out)
    else:
        print(out["diff"] or f"(v{out['from']} and v{out['to']} are identical)")
    return 0


def cmd_prompts_render(args: argparse.Namespace) -> int:
    variables: dict[str, Any] = {}
    if args.vars_file:
        variables.update(_load_file(args.vars_file))
    for kv in args.var or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ConfigError(f"--var {kv!r}: expected NAME=VALUE")
        variables[k] = v
    print_json(_registry(args).render(args.ref, variables))
    return 0


def cmd_prompts_history(args: argparse.Namespace) -> int:
    rows, nxt = _registry(args).rs.list_audit(prompt=args.name, start=args.since or 0, limit=args.limit)
    return _print_audit(args, rows, nxt)


def _print_audit(args: argparse.Namespace, rows: list[dict[str, Any]], nxt: str | None) -> int:
    if args.json:
        print_json({"data": rows, "next_cursor": nxt})
        return 0
    print_table(AUDIT_COLUMNS, [
        [fmt_time(r["ts"]), r["actor"], r["action"], fmt(r["prompt"]), fmt(r["label"]),
         (f"v{r['from_version']}->" if r["from_version"] else "") + (f"v{r['to_version']}" if r["to_version"] else ""),
         "" if not r["gate"] else f"{r['gate']} ({'passed' if r['gate_passed'] else 'FAILED'})"]
        for r in rows], empty="(nothing recorded)")
    return 0


# ---- shadow ----------------------------------------------------------------------------------
def cmd_shadow_report(args: argparse.Namespace) -> int:
    from ..cli import _store
    from .store import ReleaseStore

    end = time.time() + 60
    start = args.since if args.since is not None else end - 86400
    rows = ReleaseStore(_store(args)).shadow_report(alias=args.alias, start=start, end=end)
    if args.json:
        print_json({"data": rows, "window": {"start": start, "end": end}})
        return 0
    if not rows:
        print("(no shadow results in this window)")
        return 0
    print_table(SHADOW_COLUMNS, [
        [r["alias"], r["candidate"], int(r["n"]), int(r["errors"]), pct(r["exact_rate"]),
         pct(r["json_equal_rate"]) if r["json_n"] else "-", fmt(r["similarity"], ".2f"), fmt(r["judge_score"], ".2f"),
         f"{fmt(r['latency_ms'], '.0f')}/{fmt(r['prod_latency_ms'], '.0f')}",
         f"{fmt(r['cost_usd'], '.6f')}/{fmt(r['prod_cost_usd'], '.6f')}" if r["cost_n"] else "unknown"]
        for r in rows])
    print("\nEXACT: same text; JSON=: same JSON value (when production answered JSON); SIMIL: 0-1 wording "
          "similarity; JUDGE: 0-1 judge score; latency averages of successful calls; costs summed over "
          "calls with a known price")
    return 0


# ---- experiments -----------------------------------------------------------------------------
def _experiments(args: argparse.Namespace) -> dict[str, tuple[str, Any]]:
    from pydantic import ValidationError

    from ..config import format_validation_error, interpolate_env
    from .config import ExperimentConfig

    out = {}
    for alias, m in (_raw_config(args).get("models") or {}).items():
        raw = (m or {}).get("experiment") if isinstance(m, dict) else None
        if raw:
            try:
                cfg = ExperimentConfig.model_validate(interpolate_env(raw, f"models.{alias}.experiment"))
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, f"models.{alias}.experiment")) from None
            out[cfg.name] = (alias, cfg)
    return out


def cmd_experiments_list(args: argparse.Namespace) -> int:
    exps = _experiments(args)
    if args.json:
        print_json({"data": [{"name": n, "alias": a, **c.model_dump()} for n, (a, c) in exps.items()]})
        return 0
    for name, (alias, cfg) in sorted(exps.items()):
        weights = ", ".join(f"{k}={v:.0%}" for k, v in cfg.fractions().items())
        print(f"{name}  (alias {alias}, {cfg.mode}, unit {cfg.unit}, metric {cfg.metric}): {weights}")
    if not exps:
        print("(no experiments in this config)")
    return 0


def cmd_experiments_report(args: argparse.Namespace) -> int:
    from ..cli import _store
    from .experiments import report
    from .store import ReleaseStore

    exps = _experiments(args)
    if args.name not in exps:
        return fail(f"experiment {args.name!r} is not in the config "
                    f"(experiments: {', '.join(sorted(exps)) or 'none'}; pass --config)")
    alias, cfg = exps[args.name]
    end = time.time() + 60
    start = args.since if args.since is not None else end - 30 * 86400
    out = report(cfg, alias, ReleaseStore(_store(args)), start, end)
    if args.json:
        print_json(out)
        return 0
    print(f"experiment {cfg.name} on alias {alias}: mode {cfg.mode}, unit {cfg.unit}, metric {cfg.metric}")
    print_table(VARIANT_COLUMNS, [
        [v["name"], f"{v['weight']:.0%}", v["exposures"], v["units"], pct(v["success_rate"]),
         pct(v["evaluator"]["pass_rate"]), fmt(v["feedback"]["mean"] if v["feedback"] else None, ".3f"),
         fmt(v["latency_ms"], ".0f"), fmt(v["cost_usd"], ".6f")]
        for v in out["variants"]])
    for c in out["comparisons"]:
        if c.get("diff") is None:
            print(f"\n{c['variant']} vs {c['control']}: not enough data ({c.get('note') or 'no outcomes yet'})")
            continue
        p = f", p={c['p_value']:.4f}" if c.get("p_value") is not None else ""
        ci = c.get("ci95")
        print(f"\n{c['variant']} vs {c['control']} ({c['test']}): diff {c['diff']:+.4f}{p}, "
              f"95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}] -> {c.get('verdict')}")
    if not out["feedback_available"]:
        print("\n(feedback: no feedback table in this store yet)")
    return 0


# ---- release ---------------------------------------------------------------------------------
def cmd_release_promote(args: argparse.Namespace) -> int:
    from .config import ReleasesConfig
    from .promote import PromotionRejected, promote

    reg = _registry(args)
    cfg = _block(args, "releases", ReleasesConfig)
    try:
        out = promote(reg, args.prompt, args.to, actor=_actor(args), version=args.version, from_label=args.from_label,
                      gate=args.gate, fail_under=args.fail_under, force=args.force, cfg=cfg,
                      config_path=getattr(args, "config", None))
    except PromotionRejected as exc:
        if args.json:
            print_json({"promoted": False, "error": exc.to_dict()["error"]})
        return fail(exc.message)
    if args.json:
        print_json({"promoted": True, **out})
        return 0
    was = f" (was v{out['from_version']})" if out["from_version"] else ""
    gate = f"; gate {out['gate']} passed" if out["gate"] else "; no gate (forced)"
    print(f"promoted {out['prompt']} v{out['to_version']} to {out['label']}{was} by {out['actor']}{gate}")
    return 0


def cmd_release_rollback(args: argparse.Namespace) -> int:
    from .promote import rollback

    out = rollback(_registry(args), args.prompt, args.label, actor=_actor(args))
    print(f"rolled back {out['prompt']} {out['label']}: v{out['from_version']} -> v{out['to_version']}")
    return 0


def cmd_release_audit(args: argparse.Namespace) -> int:
    rows, nxt = _registry(args).rs.list_audit(prompt=args.prompt, start=args.since, limit=args.limit,
                                              cursor=args.cursor)
    return _print_audit(args, rows, nxt)


def cmd_release_pins(args: argparse.Namespace) -> int:
    from ..config import load_config
    from . import pinning

    cfg = load_config(getattr(args, "config", None) or os.environ.get("SHIPYARD_CONFIG") or None)
    warnings = pinning.check(cfg)
    for alias, m in sorted(cfg.models.items()):
        for t in m.targets:
            state = ("floating -> " + (pinning.dated(t.model) or "?")) if pinning.is_floating(t.model) else "pinned"
            print(f"{alias:16}  {t.provider}/{t.model}  {state}")
    for w in warnings:
        print("warning: " + w, file=sys.stderr)
    return 1 if warnings and args.strict else 0


# ---- parser ----------------------------------------------------------------------------------
def add_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], None]) -> None:
    from ..cli import parse_since

    def common(sp: argparse.ArgumentParser, json: bool = True) -> None:
        with_config(sp)
        sp.add_argument("--store", help="store URL (default: the config's store)")
        if json:
            sp.add_argument("--json", action="store_true")

    def by(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--by", help="who is making the change (default: $USER)")

    p = sub.add_parser("prompts", help="the prompt registry: versions, labels, diffs")
    ps = p.add_subparsers(dest="prompts_command", required=True)
    x = ps.add_parser("list", help="list prompts with their latest version and labels")
    common(x)
    x.add_argument("--limit", type=int, default=100)
    x.set_defaults(func=_friendly(cmd_prompts_list))
    x = ps.add_parser("show", help="show a prompt and one version (default: its default label, else latest)")
    common(x)
    x.add_argument("name")
    x.add_argument("--version", help="a version number, a label or 'latest'")
    x.set_defaults(func=_friendly(cmd_prompts_show))
    x = ps.add_parser("create", help="add a version from a YAML/JSON file {model, messages, params, response_schema}")
    common(x)
    by(x)
    x.add_argument("name")
    x.add_argument("--file", "-f", required=True)
    x.add_argument("--label", action="append", help="point this label at the new version (repeatable)")
    x.add_argument("--note")
    x.add_argument("--description")
    x.add_argument("--force", action="store_true", help="allow moving a protected label (audited)")
    x.set_defaults(func=_friendly(cmd_prompts_create))
    x = ps.add_parser("label", help="point a label at a version")
    common(x, json=False)
    by(x)
    x.add_argument("name")
    x.add_argument("label")
    x.add_argument("--version", type=int, required=True)
    x.add_argument("--force", action="store_true", help="allow moving a protected label (audited)")
    x.set_defaults(func=_friendly(cmd_prompts_label))
    x = ps.add_parser("unlabel", help="remove a label")
    common(x, json=False)
    by(x)
    x.add_argument("name")
    x.add_argument("label")
    x.add_argument("--force", action="store_true")
    x.set_defaults(func=_friendly(cmd_prompts_unlabel))
    x = ps.add_parser("diff", help="unified diff between two versions (numbers or labels)")
    common(x)
    x.add_argument("name")
    x.add_argument("a")
    x.add_argument("b")
    x.add_argument("--context", type=int, default=3)
    x.set_defaults(func=_friendly(cmd_prompts_diff))
    x = ps.add_parser("render", help="render NAME[@LABEL|@VERSION] with variables (what a request would send)")
    common(x, json=False)
    x.add_argument("ref")
    x.add_argument("--var", action="append", help="NAME=VALUE (repeatable)")
    x.add_argument("--vars-file", help="YAML/JSON mapping of variables")
    x.set_defaults(func=_friendly(cmd_prompts_render))
    x = ps.add_parser("history", help="who changed this prompt's versions and labels, when")
    common(x)
    x.add_argument("name")
    x.add_argument("--since", type=parse_since, default=None)
    x.add_argument("--limit", type=int, default=50)
    x.set_defaults(func=_friendly(cmd_prompts_history))

    s = sub.add_parser("shadow", help="shadow traffic results")
    ss = s.add_subparsers(dest="shadow_command", required=True)
    x = ss.add_parser("report", help="agreement, quality, latency and cost of shadow candidates vs production")
    common(x)
    x.add_argument("--alias")
    x.add_argument("--since", type=parse_since, default=None, help="e.g. 1h, 24h, 7d (default 24h)")
    x.set_defaults(func=_friendly(cmd_shadow_report))

    e = sub.add_parser("experiments", help="A/B experiments")
    es = e.add_subparsers(dest="experiments_command", required=True)
    x = es.add_parser("list", help="experiments in the config")
    common(x)
    x.set_defaults(func=_friendly(cmd_experiments_list))
    x = es.add_parser("report", help="per-variant results and significance")
    common(x)
    x.add_argument("name")
    x.add_argument("--since", type=parse_since, default=None, help="default 30d")
    x.set_defaults(func=_friendly(cmd_experiments_report))

    r = sub.add_parser("release", help="promote prompt versions behind an eval gate; audit; pins")
    rs = r.add_subparsers(dest="release_command", required=True)
    x = rs.add_parser("promote", help="move a label to a version once an eval passes")
    common(x)
    by(x)
    x.add_argument("prompt")
    x.add_argument("--to", required=True, help="the label to move, e.g. production")
    g = x.add_mutually_exclusive_group()
    g.add_argument("--version", type=int, help="the version to promote (default: latest)")
    g.add_argument("--from", dest="from_label", help="promote the version this label points at (e.g. staging)")
    x.add_argument("--gate", help="EVAL.yaml that must pass (`shipyard eval run`)")
    x.add_argument("--fail-under", type=float, default=None, help="passed on to the eval run")
    x.add_argument("--force", action="store_true", help="move a protected label without a gate (audited)")
    x.set_defaults(func=_friendly(cmd_release_promote))
    x = rs.add_parser("rollback", help="move a label back to the version it had before its last move")
    common(x, json=False)
    by(x)
    x.add_argument("prompt")
    x.add_argument("--label", required=True)
    x.set_defaults(func=_friendly(cmd_release_rollback))
    x = rs.add_parser("audit", help="who promoted or moved what, when")
    common(x)
    x.add_argument("--prompt")
    x.add_argument("--since", type=parse_since, default=None, help="default 90d")
    x.add_argument("--limit", type=int, default=50)
    x.add_argument("--cursor")
    x.set_defaults(func=_friendly(cmd_release_audit))
    x = rs.add_parser("pins", help="which targets use floating model names")
    with_config(x)
    x.add_argument("--strict", action="store_true", help="exit 1 when any target floats")
    x.set_defaults(func=_friendly(cmd_release_pins))
