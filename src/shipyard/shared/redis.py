"""The Redis connection every replica shares state through, and how its outages are handled.

``get_redis(config)`` is the one way to get a client: a ``redis.asyncio.Redis`` for the
config's ``redis`` block (None without one), one per event loop and URL, with short
timeouts and no retries inside redis-py (they would repeat every connect attempt too, and
repeat commands whose reply was lost; see below).

``RedisLink`` is a replica's view of that Redis's health. ``await link.run(op, fn)`` runs one
call. A connection-level failure (redis-py's ``ConnectionError`` or ``TimeoutError``) is first
retried once, at once, on a fresh connection: a pooled socket left dead by a Redis restart
or a dropped idle connection fails its first write although Redis is back, and that must
not count as an outage. redis-py has closed the failed connection and put it back in its
(last in, first out) pool by then, and nothing in between yields to other tasks, so the
retry takes that same connection and connects it afresh. The retry is redis-py's ``Retry`` (``NoBackoff``, 1 retry)
run at this level rather than inside the client, where it would also repeat each connect
attempt: a down Redis costs one extra attempt once per outage, never per request. A
retried call may already have run on Redis (its reply was lost), so whatever runs through a
link must be idempotent: the limiter's scripts are (they record their request id); the rest
are reads, ``HSET`` and ``PUBLISH``.

When the retry fails too, the link is marked down and every call fails at once with
:class:`RedisUnavailable` (no connect attempt per request), so the caller applies its
policy (``redis.on_error``: fail_open or fail_closed) without waiting.
Only the background ``health_loop()`` tries Redis while it is down, every
``redis.retry_interval_s``; its first answer marks it up again: recovery needs no restart.
Transitions are logged once, as one clear line each; errors are counted for /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any, Awaitable, Callable, TypeVar

from ..errors import ConfigError

log = logging.getLogger("shipyard.shared")
T = TypeVar("T")

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]]" = weakref.WeakKeyDictionary()


def _one_retry() -> Any:
    """One immediate retry of a connection-level error (see the module docstring)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError, TimeoutError

    return Retry(NoBackoff(), 1, supported_errors=(ConnectionError, TimeoutError))


class RedisUnavailable(Exception):
    """Redis could not be reached (or is marked down until the health probe reaches it)."""


def redis_config(config: Any) -> Any:
    """The ``redis`` block of a Config (or a RedisConfig itself); None when not configured."""
    if config is None:
        return None
    if hasattr(config, "url") and hasattr(config, "key_prefix"):
        return config
    return getattr(config, "redis", None)


def redact_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def new_client(cfg: Any, *, socket_timeout: float | None | str = "config") -> Any:
    """A new ``redis.asyncio.Redis`` for a RedisConfig: short timeouts, no retries inside
    redis-py (RedisLink retries; ``socket_timeout=None`` for a pub/sub connection that waits
    for messages)."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise ConfigError("redis: the redis block needs the redis package: pip install 'shipyard[redis]'") from None
    return aioredis.Redis.from_url(
        cfg.url,
        socket_timeout=cfg.timeout_s if socket_timeout == "config" else socket_timeout,
        socket_connect_timeout=cfg.connect_timeout_s,
        max_connections=cfg.max_connections,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
        client_name="shipyard",
    )


def get_redis(config: Any) -> Any:
    """A ``redis.asyncio.Redis`` for ``config``'s ``redis`` block, or None when there is none.

    Inside a running event loop the client is shared per (loop, URL): the gateway's limits,
    breakers and cache use one connection pool. Outside a loop a new client is returned.
    The caller must not close a shared client; :func:`close_clients` does at shutdown."""
    cfg = redis_config(config)
    if cfg is None:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return new_client(cfg)
    per_loop = _clients.get(loop)
    if per_loop is None:
        per_loop = _clients[loop] = {}
    key = f"{cfg.url}|{cfg.timeout_s}|{cfg.connect_timeout_s}|{cfg.max_connections}"
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = new_client(cfg)
    return client


async def close_clients() -> None:
    """Close the clients get_redis() shared on the running loop (at shutdown)."""
    loop = asyncio.get_running_loop()
    for client in list((_clients.pop(loop, None) or {}).values()):
        try:
            await client.aclose()
        except Exception:  # pragma: no cover - best effort at shutdown
            pass


def key(cfg: Any, *parts: str) -> str:
    """A namespaced Redis key: ``{key_prefix}:part:part``."""
    return ":".join((cfg.key_prefix, *parts))


class RedisLink:
    """One replica's health view of Redis; see the module docstring."""

    def __init__(self, cfg: Any, client: Any | None = None, *, name: str = "redis") -> None:
        self.cfg = cfg
        self.name = name
        self.client = client if client is not None else get_redis(cfg)
        self.up = True
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.errors = 0  # failed calls (counted for /metrics)
        self.outages = 0
        self.calls = 0
        self.retries = 0  # calls retried on a fresh connection after a connection-level error
        self._retry = _one_retry()

    @property
    def usable(self) -> bool:
        """False while Redis is marked down: callers apply their policy at once, and only the
        health probe (every ``retry_interval_s``) tries Redis until it answers again."""
        return self.up

    async def run(self, op: str, fn: Callable[[], Awaitable[T]], *, probe: bool = False) -> T:
        if not self.up and not probe:
            raise RedisUnavailable(self.last_error or "redis is down")
        self.calls += 1
        try:  # while down, the probe alone tries Redis, with one attempt each time
            result = await (self._retry.call_with_retry(fn, self._retrying, with_failure_count=True)
                            if self.up else fn())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(op, exc)
            raise RedisUnavailable(self.last_error or str(exc)) from None
        if not self.up:
            self._recovered()
        return result

    async def _retrying(self, exc: BaseException, failures: int) -> None:
        if failures <= self._retry.get_retries():  # else the retry failed too: run() marks the link down
            self.retries += 1
            log.debug("%s: retrying on a fresh connection after %s: %s", self.name, type(exc).__name__, exc)

    def _failed(self, op: str, exc: BaseException) -> None:
        from redis.exceptions import ResponseError

        self.errors += 1
        detail = f"{type(exc).__name__}: {str(exc)[:200]}"
        if isinstance(exc, ResponseError):  # Redis answered: a script or command error, not an outage
            log.error("%s: %s failed: %s", self.name, op, detail)
            self.last_error = detail
            return
        self.last_error = detail
        if self.up:
            self.up = False
            self.down_since = time.time()
            self.outages += 1
            log.warning("%s unreachable at %s (%s during %s); policy redis.on_error=%s: %s until it is back",
                        self.name, redact_url(self.cfg.url), detail, op, self.cfg.on_error,
                        "requests are admitted without shared rate limits and budgets"
                        if self.cfg.on_error == "fail_open" else "limited requests are refused with 503")

    def _recovered(self) -> None:
        down_for = time.time() - (self.down_since or time.time())
        self.up = True
        self.down_since = None
        self.last_error = None
        log.warning("%s reachable again at %s after %.1fs; shared rate limits and budgets enforced again",
                    self.name, redact_url(self.cfg.url), down_for)

    async def ping(self) -> bool:
        """One health check (the background loop calls this); updates ``up``."""
        try:
            await self.run("ping", self._ping, probe=True)
            return True
        except RedisUnavailable:
            return False

    async def _ping(self) -> Any:
        return await asyncio.wait_for(self.client.ping(), self.cfg.timeout_s + self.cfg.connect_timeout_s)

    async def health_loop(self) -> None:
        """Ping every ``health_interval_s`` (every ``retry_interval_s`` while down)."""
        while True:
            await self.ping()
            await asyncio.sleep(self.cfg.health_interval_s if self.up else self.cfg.retry_interval_s)

    def stats(self) -> dict[str, Any]:
        return {
            "url": redact_url(self.cfg.url),
            "ok": self.up,
            "policy": self.cfg.on_error,
            "down_since": self.down_since,
            "last_error": self.last_error,
            "errors": self.errors,
            "outages": self.outages,
            "retries": self.retries,
        }
