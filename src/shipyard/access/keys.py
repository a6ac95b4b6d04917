"""Virtual API keys: generation, hashing and their tables in the store.

A key is ``sk-sy-`` followed by 43 URL-safe characters (32 random bytes from ``secrets``,
256 bits). Only its SHA-256 is stored. A fast, unsalted hash is the right tool here, unlike
for passwords: with 256 bits of entropy nobody can guess a key or invert its hash however
fast the hash is, and salting protects nothing that is not already unguessable. Slow
password hashes (bcrypt, scrypt, argon2) exist to make guessing *low*-entropy secrets
expensive; on a key they would only cost ~50 ms of CPU per lookup and, being salted, make
an indexed lookup impossible. SHA-256 lets the gateway find a key by one primary-key read.

The full key is shown once, when it is created (or rotated); afterwards a key is known by
its id (``key_…``) and its display prefix (``sk-sy-`` plus 8 characters).

Tables (migration component ``access``; append steps, never edit):

- ``access_keys``: one row per key identity: name, user, team, roles, allowed aliases,
  limits, expiry, revocation. Budgets and rate limits are counted per key id, so they
  survive a rotation.
- ``access_key_secrets``: one row per secret (hash, prefix, expiry, revocation). Rotating a
  key adds a secret and retires the old one, at once or after a grace period.

Every method is blocking (call it from a worker thread on the server).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable


from ..errors import GatewayError, InvalidRequest, NotFound
from ..store.base import decode_cursor, encode_cursor, json_text, json_value
from ..store.migrations import register

KEY_PREFIX = "sk-sy-"
DISPLAY_CHARS = 8
ROLES = ("admin", "reviewer", "viewer")
MAX_LIST = 500

register("access", [
    # 1: keys and their secrets
    """
    CREATE TABLE access_keys (
        key_id TEXT PRIMARY KEY,
        name TEXT,
        user_id TEXT,
        team TEXT,
        roles TEXT NOT NULL,
        aliases TEXT,
        rpm INTEGER,
        tpm INTEGER,
        usd_per_day DOUBLE PRECISION,
        usd_per_month DOUBLE PRECISION,
        metadata TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        created_by TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    );
    CREATE INDEX access_keys_created ON access_keys (created_at, key_id);
    CREATE TABLE access_key_secrets (
        key_hash TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        prefix TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    );
    CREATE INDEX access_key_secrets_key ON access_key_secrets (key_id);
    CREATE INDEX access_key_secrets_prefix ON access_key_secrets (prefix);
    """,
])


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + DISPLAY_CHARS]


_j, _l = json_text, json_value  # JSON columns (store/base.py)


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as the gateway sees it (never its secret or hash)."""

    key_id: str
    name: str | None = None
    user_id: str | None = None
    team: str | None = None
    roles: frozenset[str] = frozenset()
    aliases: tuple[str, ...] | None = None  # None: every alias
    rpm: int | None = None
    tpm: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None
    metadata: dict[str, Any] | None = None
    created_at: float = 0.0
    created_by: str | None = None
    updated_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    prefixes: tuple[str, ...] = ()
    # for a looked-up secret: that secret's own expiry/revocation (rotation grace)
    secret_prefix: str | None = None
    secret_expires_at: float | None = None
    secret_revoked_at: float | None = None
    is_admin_key: bool = field(default=False)

    @property
    def label(self) -> str:
        who = f"'{self.name}' " if self.name else ""
        p = self.secret_prefix or (self.prefixes[0] if self.prefixes else None)
        return f"key {who}({p + '…' if p else self.key_id})"

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def secret_status(self, now: float | None = None) -> str:
        """The key's status as reached through the looked-up secret."""
        now = time.time() if now is None else now
        st = self.status(now)
        if st != "active":
            return st
        if self.secret_revoked_at is not None and self.secret_revoked_at <= now:
            return "revoked"
        if self.secret_expires_at is not None and self.secret_expires_at <= now:
            return "rotated"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.key_id, "name": self.name, "user": self.user_id, "team": self.team,
            "roles": sorted(self.roles), "aliases": None if self.aliases is None else list(self.aliases),
            "rpm": self.rpm, "tpm": self.tpm, "usd_per_day": self.usd_per_day, "usd_per_month": self.usd_per_month,
            "metadata": self.metadata, "prefixes": list(self.prefixes), "created_at": self.created_at,
            "created_by": self.created_by, "updated_at": self.updated_at, "expires_at": self.expires_at,
            "revoked_at": self.revoked_at, "status": self.status(),
        }


EDITABLE = ("name", "user_id", "team", "roles", "aliases", "rpm", "tpm", "usd_per_day", "usd_per_month",
            "metadata", "expires_at")


def check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate key settings (from the admin API or the CLI); 400 naming the field."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k not in EDITABLE:
            raise InvalidRequest(f"Unknown field '{k}' for a key; expected one of: {', '.join(EDITABLE)}",
                                 param=k, code="unknown_parameter")
        if v is None:
            out[k] = None
            continue
        if k in ("name", "user_id", "team"):
            if not isinstance(v, str) or not v or len(v) > 200:
                raise InvalidRequest(f"Invalid value for '{k}': a string of 1-200 characters", param=k)
        elif k == "roles":
            if not isinstance(v, list) or any(r not in ROLES for r in v):
                raise InvalidRequest(f"Invalid value for 'roles': a list of {', '.join(ROLES)}", param=k)
            v = sorted(set(v))
        elif k == "aliases":
            if not isinstance(v, list) or not all(isinstance(a, str) and a for a in v):
                raise InvalidRequest("Invalid value for 'aliases': a list of alias names (patterns like "
                                     "'prompt:*' allowed), or null for every alias", param=k)
        elif k in ("rpm", "tpm"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidRequest(f"Invalid value for '{k}': a whole number >= 1, or null for no limit", param=k)
        elif k in ("usd_per_day", "usd_per_month", "expires_at"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise InvalidRequest(f"Invalid value for '{k}': a number >= 0, or null", param=k)
            v = float(v)
        elif k == "metadata":
            if not isinstance(v, dict):
                raise InvalidRequest("Invalid value for 'metadata': an object", param=k)
        out[k] = v
    return out


class KeyStoreUnavailable(GatewayError):
    status = 503
    type = "api_error"


class KeyStore:
    """The key tables of one SQL store (the engine's, or one the CLI opened)."""

    def __init__(self, store: Any) -> None:
        if store is None or not hasattr(store, "_write"):
            raise KeyStoreUnavailable("Virtual keys need a SQL store (store: sqlite:///... or postgresql://...).",
                                      code="key_store_unavailable")
        self.store = store
        self.q = store.dialect.q
        store.migrate()  # idempotent: applies the access steps if this store predates them
        cols = ("key_id", "name", "user_id", "team", "roles", "aliases", "rpm", "tpm", "usd_per_day",
                "usd_per_month", "metadata", "created_at", "created_by", "updated_at", "expires_at", "revoked_at")
        self._cols = cols
        self._sql_lookup = self.q(
            "SELECT " + ", ".join(f"k.{c}" for c in cols) + ", s.prefix, s.expires_at, s.revoked_at "
            "FROM access_key_secrets s JOIN access_keys k ON k.key_id = s.key_id WHERE s.key_hash = ?")

    # ---- rows ----------------------------------------------------------------------
    def _record(self, row: Iterable[Any], prefixes: tuple[str, ...] = (), secret: tuple[Any, ...] | None = None) -> KeyRecord:
        d = dict(zip(self._cols, row))
        aliases = _l(d["aliases"])
        return KeyRecord(
            key_id=d["key_id"], name=d["name"], user_id=d["user_id"], team=d["team"],
            roles=frozenset(_l(d["roles"]) or ()), aliases=None if aliases is None else tuple(aliases),
            rpm=None if d["rpm"] is None else int(d["rpm"]), tpm=None if d["tpm"] is None else int(d["tpm"]),
            usd_per_day=_f(d["usd_per_day"]), usd_per_month=_f(d["usd_per_month"]), metadata=_l(d["metadata"]),
            created_at=float(d["created_at"]), created_by=d["created_by"], updated_at=float(d["updated_at"]),
            expires_at=_f(d["expires_at"]), revoked_at=_f(d["revoked_at"]),
            prefixes=prefixes if prefixes or secret is None else (secret[0],),
            secret_prefix=None if secret is None else secret[0],
            secret_expires_at=None if secret is None else _f(secret[1]),
            secret_revoked_at=None if secret is None else _f(secret[2]),
        )

    def _prefixes(self, cur: Any, key_ids: list[str]) -> dict[str, tuple[str, ...]]:
        if not key_ids:
            return {}
        now = time.time()
        cur.execute(self.q(f"SELECT key_id, prefix, expires_at, revoked_at FROM access_key_secrets WHERE key_id IN "
                           f"({', '.join('?' * len(key_ids))}) ORDER BY created_at DESC"), key_ids)
        out: dict[str, list[str]] = {}
        for kid, prefix, exp, rev in cur.fetchall():
            if rev is None and (exp is None or float(exp) > now):
                out.setdefault(kid, []).append(prefix)
        return {k: tuple(v) for k, v in out.items()}

    # ---- the request path's one read (cached by access/auth.py) ----------------------
    def lookup(self, key_hash: str) -> KeyRecord | None:
        with self.store._read() as cur:
            cur.execute(self._sql_lookup, (key_hash,))
            row = cur.fetchone()
        if row is None:
            return None
        n = len(self._cols)
        return self._record(row[:n], secret=tuple(row[n:]))

    # ---- admin -----------------------------------------------------------------------
    def create(self, fields: dict[str, Any], created_by: str | None = None) -> tuple[str, KeyRecord]:
        f = check_fields(fields)
        now = time.time()
        key_id = "key_" + uuid.uuid4().hex[:16]
        secret = new_secret()
        with self.store._write() as cur:
            cur.execute(self.q(
                "INSERT INTO access_keys (key_id, name, user_id, team, roles, aliases, rpm, tpm, usd_per_day, "
                "usd_per_month, metadata, created_at, created_by, updated_at, expires_at, revoked_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"),
                (key_id, f.get("name"), f.get("user_id"), f.get("team"), _j(f.get("roles") or []),
                 _j(f.get("aliases")), f.get("rpm"), f.get("tpm"), f.get("usd_per_day"), f.get("usd_per_month"),
                 _j(f.get("metadata")), now, created_by, now, f.get("expires_at")))
            self._add_secret(cur, key_id, secret, now)
        return secret, self.get(key_id)

    def _add_secret(self, cur: Any, key_id: str, secret: str, now: float) -> None:
        cur.execute(self.q("INSERT INTO access_key_secrets (key_hash, key_id, prefix, created_at, expires_at, "
                           "revoked_at) VALUES (?, ?, ?, ?, NULL, NULL)"),
                    (hash_key(secret), key_id, display_prefix(secret), now))

    def resolve(self, ident: str) -> str:
        """A key id from an id or a display prefix (``sk-sy-AbCd1234``) or a full key; 404 if none."""
        with self.store._read() as cur:
            if ident.startswith("key_"):
                cur.execute(self.q("SELECT key_id FROM access_keys WHERE key_id = ?"), (ident,))
                rows = cur.fetchall()
            elif ident.startswith(KEY_PREFIX) and len(ident) > len(KEY_PREFIX) + DISPLAY_CHARS:
                cur.execute(self.q("SELECT key_id FROM access_key_secrets WHERE key_hash = ?"), (hash_key(ident),))
                rows = cur.fetchall()
            else:
                cur.execute(self.q("SELECT DISTINCT key_id FROM access_key_secrets WHERE prefix = ?"), (ident,))
                rows = cur.fetchall()
        if not rows:
            raise NotFound(f"No key with id or prefix '{ident[:40]}'.", code="key_not_found")
        if len(rows) > 1:
            raise InvalidRequest(f"The prefix '{ident}' matches {len(rows)} keys; use the key id.",
                                 code="ambiguous_key")
        return rows[0][0]

    def get(self, ident: str) -> KeyRecord:
        key_id = self.resolve(ident)
        with self.store._read() as cur:
            cur.execute(self.q(f"SELECT {', '.join(self._cols)} FROM access_keys WHERE key_id = ?"), (key_id,))
            row = cur.fetchone()
            prefixes = self._prefixes(cur, [key_id])
        return self._record(row, prefixes.get(key_id, ()))

    def list(self, *, include_revoked: bool = False, team: str | None = None, user_id: str | None = None,
             limit: int = 100, cursor: str | None = None) -> tuple[list[KeyRecord], str | None]:
        """Newest first, cursor-paginated."""
        n = max(1, min(limit, MAX_LIST))
        where, args = ["1 = 1"], []
        if not include_revoked:
            where.append("revoked_at IS NULL")
        if team is not None:
            where.append("team = ?")
            args.append(team)
        if user_id is not None:
            where.append("user_id = ?")
            args.append(user_id)
        if cursor:
            ts, kid = decode_cursor(cursor)
            where.append("(created_at < ? OR (created_at = ? AND key_id < ?))")
            args += [ts, ts, kid]
        with self.store._read() as cur:
            cur.execute(self.q(f"SELECT {', '.join(self._cols)} FROM access_keys WHERE {' AND '.join(where)} "
                               "ORDER BY created_at DESC, key_id DESC LIMIT ?"), (*args, n + 1))
            rows = cur.fetchall()
            prefixes = self._prefixes(cur, [r[0] for r in rows[:n]])
        recs = [self._record(r, prefixes.get(r[0], ())) for r in rows[:n]]
        nxt = encode_cursor(recs[-1].created_at, recs[-1].key_id) if len(rows) > n else None
        return recs, nxt

    def update(self, ident: str, fields: dict[str, Any]) -> KeyRecord:
        f = check_fields(fields)
        key_id = self.resolve(ident)
        if f:
            sets, args = [], []
            for k, v in f.items():
                sets.append(f"{k} = ?")
                args.append(_j(v) if k in ("roles", "aliases", "metadata") else v)
            with self.store._write() as cur:
                cur.execute(self.q(f"UPDATE access_keys SET {', '.join(sets)}, updated_at = ? WHERE key_id = ?"),
                            (*args, time.time(), key_id))
        return self.get(key_id)

    def rotate(self, ident: str, grace_s: float = 0.0) -> tuple[str, KeyRecord]:
        """A new secret for the key (same id, settings, budgets and limits); the old secrets
        stop working now, or after ``grace_s`` seconds."""
        key_id = self.resolve(ident)
        rec = self.get(key_id)
        if rec.status() == "revoked":
            raise InvalidRequest(f"Key {key_id} is revoked; create a new key instead.", code="key_revoked")
        now = time.time()
        secret = new_secret()
        with self.store._write() as cur:
            cur.execute(self.q("UPDATE access_key_secrets SET expires_at = ? WHERE key_id = ? AND revoked_at IS NULL "
                               "AND (expires_at IS NULL OR expires_at > ?)"), (now + max(0.0, grace_s), key_id, now + grace_s))
            self._add_secret(cur, key_id, secret, now)
            cur.execute(self.q("UPDATE access_keys SET updated_at = ? WHERE key_id = ?"), (now, key_id))
        return secret, self.get(key_id)

    def revoke(self, ident: str) -> KeyRecord:
        key_id = self.resolve(ident)
        now = time.time()
        with self.store._write() as cur:
            cur.execute(self.q("UPDATE access_keys SET revoked_at = COALESCE(revoked_at, ?), updated_at = ? "
                               "WHERE key_id = ?"), (now, now, key_id))
            cur.execute(self.q("UPDATE access_key_secrets SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?"),
                        (now, key_id))
        return self.get(key_id)
