"""The server's access layer: keys, roles, limits and the shared state behind them.

``build_access(engine)`` returns None when neither ``auth`` nor ``redis`` is configured: the
server then stays open exactly as before, with nothing on its request path. Otherwise
``Access`` owns the key lookups (``auth.py``), the limiter (``limits.py`` over Redis or
memory), the Redis link and its health loop, shared circuit breakers and key-change
notifications; the app calls ``start()``/``close()`` from its lifespan.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from typing import Any

from ..errors import GatewayError
from .auth import Authenticator, Forbidden, Unauthorized
from .limits import Lease, Limiter
from .memory import MemoryLimiter
from .metrics import AccessMetrics

log = logging.getLogger("shipyard.access")


def has_role(key: Any, role: str) -> bool:
    """admin implies every role; reviewer implies viewer."""
    roles = key.roles
    return "admin" in roles or role in roles or (role == "viewer" and "reviewer" in roles)


def alias_allowed(key: Any, model: str) -> bool:
    if key.aliases is None:
        return True
    for pattern in key.aliases:
        if pattern == model or (any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(model, pattern)):
            return True
    return False


class Access:
    def __init__(self, engine: Any) -> None:
        cfg = engine.config
        self.engine = engine
        self.config = cfg
        self.metrics = AccessMetrics()
        self.metrics.access = self
        self.auth_on = cfg.auth is not None and cfg.auth.enabled
        self.keystore: Any = None
        self.auth: Authenticator | None = None
        if self.auth_on:
            from .keys import KeyStore

            self.keystore = KeyStore(engine.store)
            self.auth = Authenticator(cfg.auth, self.keystore, self.metrics)
        self.link: Any = None
        self.shared_breakers: Any = None
        self.limiter: Limiter | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.started = False

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self.started:
            return
        cfg = self.config
        if cfg.redis is not None:
            from ..shared.redis import RedisLink, get_redis

            self.link = RedisLink(cfg.redis, get_redis(cfg.redis))
            self._spawn(self.link.health_loop(), "redis health")
            if cfg.redis.share_breakers and self.engine.breakers:
                from ..shared.breakers import SharedBreakers

                self.shared_breakers = SharedBreakers(self.engine.breakers, self.link)
                self.shared_breakers.attach()
                self._spawn(self.shared_breakers.run(), "breaker sync")
            if self.auth is not None:
                from ..shared import notify

                self._spawn(notify.listen(cfg.redis, self._key_changed), "key changes")
        use_redis = cfg.limits.backend == "redis" or (cfg.limits.backend == "auto" and self.link is not None)
        if use_redis:
            from ..shared.limiter import RedisLimiter

            backend: Any = RedisLimiter(self.link)
        else:
            backend = MemoryLimiter()
        self.limiter = Limiter(self.engine, backend, self.link if use_redis else None, self.metrics)
        if self.auth is not None:
            self._spawn(self._store_health(), "key store health")
        self.started = True

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"shipyard {name}")
        self._tasks.append(task)

    async def _store_health(self) -> None:
        interval = self.config.redis.health_interval_s if self.config.redis is not None else 2.0
        while True:
            await asyncio.sleep(interval if self.auth.store_up else 1.0)
            await self.auth.check_store()

    def _key_changed(self, key_id: str) -> None:
        if self.auth is not None:
            self.auth.invalidate(None if key_id == "*" else key_id)

    async def close(self) -> None:
        """Graceful shutdown: settle what is pending, then stop the background tasks."""
        if self.limiter is not None:
            await self.limiter.drain()
        if self.auth is not None:
            await self.auth.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except BaseException:
                pass
        self._tasks.clear()
        if self.shared_breakers is not None:
            self.shared_breakers.detach()
        self.started = False

    async def close_clients(self) -> None:
        """Close the shared Redis clients: after the engine has closed (the cache writes last)."""
        if self.config.redis is not None:
            from ..shared.redis import close_clients

            await close_clients()

    # ---- the request path --------------------------------------------------------------
    async def admit(self, request: Any, model: str, body: dict[str, Any], span: Any = None, *,
                    embeddings: bool = False) -> Lease | None:
        """For an OpenAI route after its body is parsed: the key's aliases (403), its rate
        limits and budgets (429); a Lease to settle when the call is done, or None."""
        key = request.scope.get("state", {}).get("principal")
        if key is None:
            return None
        if not alias_allowed(key, model):
            self.metrics.decision("forbidden")
            allowed = ", ".join(key.aliases or ()) or "none"
            raise Forbidden(f"The {key.label} may not use the model '{model}'. Models this key may use: {allowed}.",
                            param="model", code="model_not_allowed")
        if span is not None:
            if not key.is_admin_key:
                span.attributes["key_id"] = key.key_id
                if key.team:
                    span.attributes["team"] = key.team
            if span.user_id is None and key.user_id:
                span.user_id = key.user_id
        if key.is_admin_key or self.limiter is None:
            return None
        return await self.limiter.admit(key, model, body, embeddings=embeddings)

    # ---- admin ---------------------------------------------------------------------------
    async def key_changed(self, key_id: str) -> None:
        """After a revoke/rotate/edit here: forget it now, and tell the other replicas."""
        if self.auth is not None:
            self.auth.invalidate(key_id)
        if self.link is not None:
            from ..shared import notify

            await notify.publish(self.link, key_id)

    # ---- health ------------------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        """Dependency states and whether they make this replica unready (fail_closed)."""
        out: dict[str, Any] = {"ready": True}
        if self.link is not None:
            r = self.link.stats()
            out["redis"] = r
            if not r["ok"] and r["policy"] == "fail_closed":
                out["ready"] = False
        if self.auth is not None:
            st = self.auth.stats()
            out["key_store"] = {"ok": st["store_ok"], "policy": self.config.auth.on_store_error,
                                "last_error": st["store_error"], "cached_keys": st["cached"]}
            if not st["store_ok"] and self.config.auth.on_store_error == "fail_closed":
                out["ready"] = False
        return out

    def register_metrics(self, engine: Any) -> None:
        """Add this layer's collector to the app's /metrics registry (if /metrics is mounted)."""
        for fn in engine.span_listeners:
            owner = getattr(fn, "__self__", None)
            registry = getattr(owner, "registry", None)
            if registry is not None and hasattr(registry, "register"):
                try:
                    registry.register(self.metrics.collector())
                except ValueError:  # already registered
                    pass
                return


def build_access(engine: Any) -> Access | None:
    cfg = engine.config
    if (cfg.auth is None or not cfg.auth.enabled) and cfg.redis is None:
        return None
    return Access(engine)


def principal(request: Any) -> Any:
    """The key the request authenticated with (a KeyRecord), or None (auth off / none given)."""
    return request.scope.get("state", {}).get("principal")


def require_role(request: Any, role: str) -> Any:
    """For route modules: demand ``role`` ("viewer", "reviewer" or "admin"; admin implies
    both, reviewer implies viewer) of the
    caller. Returns the caller's KeyRecord, or None when auth is off on this server (open as
    before). Raises 401 when no valid key was given and 403 when the key lacks the role.
    The access middleware already applies this to every /api and /ui path."""
    access = getattr(request.app.state, "access", None)
    if access is None or not access.auth_on:
        return None
    key = principal(request)
    if key is None:
        raise Unauthorized("This page needs an API key with the '%s' role (or the admin key): send "
                           "'Authorization: Bearer <key>'." % role, code="missing_api_key")
    if not has_role(key, role):
        raise Forbidden(f"The {key.label} lacks the '{role}' role needed here (it has: "
                        f"{', '.join(sorted(key.roles)) or 'no roles'}).", code="permission_denied")
    return key


__all__ = ["Access", "GatewayError", "build_access", "principal", "require_role"]
