"""Who is calling: the admin key, or a virtual key looked up through an in-process cache.

The request path does no database round trip for a known key: a lookup is served from a
cache for ``auth.cache_ttl_s``; after that the cached entry is still served while one
background read refreshes it (so a revocation reaches every replica within about that
long; the replica that revokes forgets the key at once). A key not in the cache is read
once (concurrent requests with it share that read), and an unknown key is remembered as
unknown for ``auth.negative_cache_ttl_s``. When the store cannot be read, cached keys keep
working for up to ``auth.max_stale_s`` and an uncached key gets a 503 — never access.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from typing import Any

from ..errors import GatewayError
from .keys import KEY_PREFIX, KeyRecord, hash_key

log = logging.getLogger("shipyard.access")

ADMIN = KeyRecord(key_id="admin", name="admin key", roles=frozenset({"admin"}), is_admin_key=True)


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"


class Forbidden(GatewayError):
    status = 403
    type = "invalid_request_error"


class AuthUnavailable(GatewayError):
    status = 503
    type = "api_error"


def _mask(token: str) -> str:
    if len(token) <= 12:
        return "…"
    return f"{token[:len(KEY_PREFIX) + 4] if token.startswith(KEY_PREFIX) else token[:3]}…{token[-4:]}"


def token_from_headers(headers: Any, *, allow_basic: bool) -> str | None:
    """The key from ``Authorization: Bearer``, ``x-api-key``/``api-key``, or (for browsers on
    /ui and GET /api) HTTP Basic with the key as the password."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return value.strip() or None
        if scheme == "basic" and allow_basic:
            try:
                raw = base64.b64decode(value.strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            return raw.partition(":")[2] or None
    return headers.get("x-api-key") or headers.get("api-key") or None


class Authenticator:
    def __init__(self, cfg: Any, keystore: Any, metrics: Any) -> None:
        self.cfg = cfg
        self.keystore = keystore
        self.metrics = metrics
        self._admin = cfg.admin_key.encode() if cfg.admin_key else None
        # key hash -> (fetched at (monotonic), record or None)
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._inflight: dict[str, asyncio.Future[KeyRecord | None]] = {}
        self.store_up = True
        self.store_error: str | None = None
        self._store_retry_at = 0.0
        self.hits = 0
        self.misses = 0
        self.stale_served = 0
        self.closed = False
        self._fetches: set[asyncio.Task[Any]] = set()

    # ---- the request path --------------------------------------------------------------
    async def authenticate(self, token: str | None) -> KeyRecord:
        if not token:
            self.metrics.decision("unauthorized")
            raise Unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                               "(the openai SDK's api_key).", code="missing_api_key")
        if self._admin is not None and hmac.compare_digest(token.encode(), self._admin):
            return ADMIN
        rec = await self._lookup(hash_key(token))
        if rec is None:
            self.metrics.decision("unauthorized")
            raise Unauthorized(f"Incorrect API key provided: {_mask(token)}. Ask your gateway admin for a key.",
                               code="invalid_api_key")
        status = rec.secret_status()
        if status != "active":
            self.metrics.decision("unauthorized")
            what = {"revoked": "has been revoked", "expired": "has expired",
                    "rotated": "was rotated and its grace period is over; use the new key"}[status]
            raise Unauthorized(f"The API key {_mask(token)} ({rec.key_id}) {what}.", code=f"{status}_api_key")
        return rec

    async def _lookup(self, h: str) -> KeyRecord | None:
        now = time.monotonic()
        entry = self._cache.get(h)
        if entry is not None:
            fetched, rec = entry
            age = now - fetched
            if rec is not None:
                if age < self.cfg.cache_ttl_s:
                    self.hits += 1
                    return rec
                if age < self.cfg.max_stale_s:  # serve it, refresh beside the request
                    self.hits += 1
                    if h not in self._inflight:
                        self._start_fetch(h)
                    return rec
            elif age < self.cfg.negative_cache_ttl_s:
                self.hits += 1
                return None
        self.misses += 1
        fut = self._inflight.get(h) or self._start_fetch(h)
        try:
            return await asyncio.shield(fut)
        except AuthUnavailable:
            if entry is not None and entry[1] is not None and now - entry[0] < self.cfg.max_stale_s:
                self.stale_served += 1
                return entry[1]
            raise

    def _start_fetch(self, h: str) -> asyncio.Future[KeyRecord | None]:
        fut: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._inflight[h] = fut
        task = asyncio.get_running_loop().create_task(self._fetch(h, fut))
        self._fetches.add(task)
        task.add_done_callback(self._fetch_done)
        return fut

    def _fetch_done(self, task: asyncio.Task[Any]) -> None:
        self._fetches.discard(task)
        if not task.cancelled():
            task.exception()

    async def close(self) -> None:
        """At shutdown: stop background reads (no false "store unreachable" alarms)."""
        self.closed = True
        for t in list(self._fetches):
            t.cancel()

    async def _fetch(self, h: str, fut: asyncio.Future[KeyRecord | None]) -> None:
        try:
            if not self.store_up and time.monotonic() < self._store_retry_at:
                raise AuthUnavailable(self._unavailable_msg(), code="auth_unavailable", headers={"retry-after": "1"})
            try:
                rec = await asyncio.wait_for(asyncio.to_thread(self.keystore.lookup, h), self.cfg.lookup_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._store_failed(exc)
                raise AuthUnavailable(self._unavailable_msg(), code="auth_unavailable",
                                      headers={"retry-after": "1"}) from None
            self._store_ok()
            self._put(h, rec)
            if not fut.done():
                fut.set_result(rec)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else AuthUnavailable("cancelled"))
                fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
        finally:
            self._inflight.pop(h, None)

    def _unavailable_msg(self) -> str:
        return ("The key store is unreachable, so this API key cannot be checked right now; "
                "try again shortly.")

    def _put(self, h: str, rec: KeyRecord | None) -> None:
        cache = self._cache
        if len(cache) >= self.cfg.cache_size and h not in cache:
            for old in list(cache)[: max(1, len(cache) // 10)]:  # the oldest tenth
                del cache[old]
        cache.pop(h, None)
        cache[h] = (time.monotonic(), rec)

    # ---- the store's health ------------------------------------------------------------
    def _store_failed(self, exc: BaseException) -> None:
        if self.closed:  # shutting down: the thread pool is gone, not the store
            return
        self.metrics.dependency_error("key_store")
        self._store_retry_at = time.monotonic() + 1.0
        detail = f"{type(exc).__name__}: {str(exc).strip()[:200]}" if not isinstance(exc, TimeoutError) else \
            f"no answer within auth.lookup_timeout_s={self.cfg.lookup_timeout_s}s"
        self.store_error = detail
        if self.store_up:
            self.store_up = False
            log.warning("key store unreachable (%s); cached keys keep working for up to auth.max_stale_s=%ss, "
                        "new keys get 503 until it is back", detail, self.cfg.max_stale_s)

    def _store_ok(self) -> None:
        if not self.store_up:
            self.store_up = True
            self.store_error = None
            log.warning("key store reachable again; key lookups resumed")

    async def check_store(self) -> bool:
        """A health probe (background loop): one cheap read."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self.keystore.lookup, "0" * 64), self.cfg.lookup_timeout_s)
        except Exception as exc:
            self._store_failed(exc)
            return False
        self._store_ok()
        return True

    # ---- admin changes -----------------------------------------------------------------
    def invalidate(self, key_id: str | None = None) -> None:
        """Forget cached lookups of one key (all keys when None): the next request re-reads."""
        if key_id is None:
            self._cache.clear()
            return
        for h, (_, rec) in list(self._cache.items()):
            if rec is not None and rec.key_id == key_id:
                del self._cache[h]

    def stats(self) -> dict[str, Any]:
        return {"cached": len(self._cache), "hits": self.hits, "misses": self.misses,
                "stale_served": self.stale_served, "store_ok": self.store_up, "store_error": self.store_error}
