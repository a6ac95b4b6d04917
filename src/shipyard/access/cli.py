"""``shipyard keys create|list|show|update|rotate|revoke``: virtual keys, straight in the store.

The CLI reads the config's ``store`` (or ``--store URL``) and, when the config has a
``redis`` block, announces revocations, rotations and edits so running replicas drop the
key from their caches at once (else within ``auth.cache_ttl_s``).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ..cli_output import Column, fmt_time, print_json, print_table
from ..timeparse import parse_duration

KEY_COLUMNS = (Column("ID", 20), Column("PREFIX", 15), Column("NAME", 16, clip=True), Column("USER", 12, clip=True),
               Column("TEAM", 10, clip=True), Column("STATUS", 8), Column("ALIASES", 16, clip=True), Column("LIMITS"))


def _duration(value: str) -> float:
    seconds = parse_duration(value)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 12h, 90d; got {value!r}")
    return seconds


def _keystore(args: argparse.Namespace) -> Any:
    from ..cli import _store
    from .keys import KeyStore

    return KeyStore(_store(args))


def _announce(args: argparse.Namespace, key_id: str) -> None:
    """Tell running replicas (over Redis, when the config has it) to forget this key."""
    from ..cli import _config_source

    source = _config_source(args)
    if source is None:
        return
    try:
        import yaml

        from ..config import RedisConfig, interpolate_env

        with open(source) as fh:
            data = yaml.safe_load(fh) or {}
        block = data.get("redis") if isinstance(data, dict) else None
        if not isinstance(block, dict):
            return
        cfg = RedisConfig.model_validate(interpolate_env(block, "redis"))
    except Exception:
        return
    from ..shared.notify import publish_sync

    publish_sync(cfg, key_id)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    import time

    out: dict[str, Any] = {}
    for attr, name in (("name", "name"), ("user", "user_id"), ("team", "team"), ("rpm", "rpm"), ("tpm", "tpm"),
                       ("usd_per_day", "usd_per_day"), ("usd_per_month", "usd_per_month")):
        v = getattr(args, attr, None)
        if v is not None:
            out[name] = v
    if getattr(args, "alias", None):
        out["aliases"] = args.alias
    if getattr(args, "role", None):
        out["roles"] = args.role
    if getattr(args, "expires_in", None) is not None:
        out["expires_at"] = time.time() + args.expires_in
    for attr, name in (("no_rpm", "rpm"), ("no_tpm", "tpm"), ("no_budget_day", "usd_per_day"),
                       ("no_budget_month", "usd_per_month"), ("all_aliases", "aliases")):
        if getattr(args, attr, False):
            out[name] = None
    return out


def _when(ts: float | None) -> str:
    return fmt_time(ts, seconds=False)


def _limits(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={d[k]:g}" for k in ("rpm", "tpm", "usd_per_day", "usd_per_month")
                     if d.get(k) is not None) or "-"


def _print_key(d: dict[str, Any], secret: str | None = None) -> None:
    if secret:
        print(f"key:      {secret}")
        print("          (shown once: store it now; only its hash is kept)")
    for label, k in (("id", "id"), ("name", "name"), ("user", "user"), ("team", "team"), ("status", "status")):
        print(f"{label + ':':9} {d.get(k) if d.get(k) is not None else '-'}")
    print(f"{'prefix:':9} {', '.join(d['prefixes']) or '-'}")
    print(f"{'roles:':9} {', '.join(d['roles']) or '-'}")
    print(f"{'aliases:':9} {'all' if d['aliases'] is None else ', '.join(d['aliases'])}")
    lim = [f"{k}={d[k]}" for k in ("rpm", "tpm", "usd_per_day", "usd_per_month") if d.get(k) is not None]
    print(f"{'limits:':9} {', '.join(lim) or 'none'}")
    print(f"{'created:':9} {_when(d['created_at'])}  expires: {_when(d['expires_at'])}  "
          f"revoked: {_when(d['revoked_at'])}")


def _out(args: argparse.Namespace, d: dict[str, Any], secret: str | None = None) -> int:
    if args.json:
        print_json({**({"key": secret} if secret else {}), **d}, indent=False)
    else:
        _print_key(d, secret)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    secret, rec = _keystore(args).create(_fields(args), created_by="cli")
    return _out(args, rec.to_dict(), secret)


def cmd_list(args: argparse.Namespace) -> int:
    rows, cursor = _keystore(args).list(include_revoked=args.all, team=args.team, user_id=args.user,
                                        limit=args.limit, cursor=args.cursor)
    if args.json:
        print_json({"data": [r.to_dict() for r in rows], "next_cursor": cursor}, indent=False)
        return 0
    print_table(KEY_COLUMNS, [
        [r.key_id, (r.prefixes[0] + "…") if r.prefixes else "-", r.name or "-", r.user_id or "-", r.team or "-",
         r.status(), "all" if r.aliases is None else ",".join(r.aliases), _limits(r.to_dict())]
        for r in rows], empty="(no keys)")
    if cursor:
        print(f"more: shipyard keys list --cursor {cursor}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    return _out(args, _keystore(args).get(args.key).to_dict())


def cmd_update(args: argparse.Namespace) -> int:
    rec = _keystore(args).update(args.key, _fields(args))
    _announce(args, rec.key_id)
    return _out(args, rec.to_dict())


def cmd_rotate(args: argparse.Namespace) -> int:
    secret, rec = _keystore(args).rotate(args.key, args.grace or 0.0)
    _announce(args, rec.key_id)
    return _out(args, rec.to_dict(), secret)


def cmd_revoke(args: argparse.Namespace) -> int:
    rec = _keystore(args).revoke(args.key)
    _announce(args, rec.key_id)
    if not args.json:
        print(f"revoked {rec.key_id} ({', '.join(rec.prefixes) or 'no active secret'})")
        return 0
    return _out(args, rec.to_dict())


def add_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], None]) -> None:
    k = sub.add_parser("keys", help="virtual API keys: create, list, show, update, rotate, revoke")
    ksub = k.add_subparsers(dest="keys_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        with_config(p)
        p.add_argument("--store", help="store URL (default: the config's store)")
        p.add_argument("--json", action="store_true")

    def settings(p: argparse.ArgumentParser, *, editing: bool) -> None:
        p.add_argument("--name")
        p.add_argument("--user", help="the user the key belongs to (recorded on its traces)")
        p.add_argument("--team", help="the team (limits.teams applies to every key of a team)")
        p.add_argument("--alias", action="append", help="an alias the key may call (repeat; patterns like "
                       "'prompt:*'); default every alias")
        p.add_argument("--role", action="append", choices=["admin", "reviewer", "viewer"],
                       help="admin: /api/keys and every /api and /ui write; viewer: read /api and /ui")
        p.add_argument("--rpm", type=int, help="requests per minute")
        p.add_argument("--tpm", type=int, help="tokens per minute (prompt + completion)")
        p.add_argument("--usd-per-day", "--budget-day", dest="usd_per_day", type=float, help="USD per UTC day")
        p.add_argument("--usd-per-month", "--budget-month", dest="usd_per_month", type=float,
                       help="USD per UTC calendar month")
        p.add_argument("--expires-in", type=_duration, help="e.g. 30d, 12h")
        if editing:
            p.add_argument("--no-rpm", action="store_true")
            p.add_argument("--no-tpm", action="store_true")
            p.add_argument("--no-budget-day", action="store_true")
            p.add_argument("--no-budget-month", action="store_true")
            p.add_argument("--all-aliases", action="store_true")

    c = ksub.add_parser("create", help="create a key (printed once)")
    common(c)
    settings(c, editing=False)
    c.set_defaults(func=cmd_create)

    ls = ksub.add_parser("list", help="keys by prefix, newest first")
    common(ls)
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    ls.add_argument("--team")
    ls.add_argument("--user")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--cursor")
    ls.set_defaults(func=cmd_list)

    sh = ksub.add_parser("show", help="one key by id or prefix")
    common(sh)
    sh.add_argument("key", help="key id (key_...) or display prefix (sk-sy-XXXXXXXX)")
    sh.set_defaults(func=cmd_show)

    up = ksub.add_parser("update", help="change a key's settings")
    common(up)
    up.add_argument("key")
    settings(up, editing=True)
    up.set_defaults(func=cmd_update)

    ro = ksub.add_parser("rotate", help="a new secret for the key (same id, limits, budgets)")
    common(ro)
    ro.add_argument("key")
    ro.add_argument("--grace", type=_duration, help="keep the old secret working this long (e.g. 1h)")
    ro.set_defaults(func=cmd_rotate)

    rv = ksub.add_parser("revoke", help="revoke a key (all its secrets)")
    common(rv)
    rv.add_argument("key")
    rv.set_defaults(func=cmd_revoke)
