"""Redis cache backend: shared by every replica, through the gateway's one Redis client
(``shipyard.shared.redis.get_redis``, the top-level ``redis`` block).

Entries are strings with a TTL (``{redis.key_prefix}:cache:e:{key}``); a semantic context
is a hash of key → packed vector (``...:cache:v:{context}``) whose TTL is renewed on every
write, so a context nobody writes to disappears on its own. A vector whose entry expired
is dropped when a lookup finds the entry gone. After a failed call Redis is not tried
again for ``redis.retry_interval_s``: every lookup in that window is a miss, at once.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

log = logging.getLogger("shipyard.cache")


class RedisUnavailable(Exception):
    pass


class RedisBackend:
    name = "redis"

    def __init__(self, config: Any) -> None:
        from ..shared.redis import redis_config

        self.config = config
        self.cfg = redis_config(config)
        self.prefix = f"{self.cfg.key_prefix}:cache"
        self._retry_at = 0.0
        self.errors = 0
        self.last_error: str | None = None

    @property
    def client(self) -> Any:
        from ..shared.redis import get_redis

        return get_redis(self.config)  # one shared client per event loop

    def _k(self, kind: str, key: str) -> str:
        return f"{self.prefix}:{kind}:{key}"

    async def _call(self, op: str, fn: Any) -> Any:
        if time.monotonic() < self._retry_at:
            raise RedisUnavailable(self.last_error or "redis is down")
        try:
            return await fn()
        except Exception as exc:
            self.errors += 1
            was_up = self.last_error is None
            self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self._retry_at = time.monotonic() + self.cfg.retry_interval_s
            if was_up:
                from ..shared.redis import redact_url

                log.warning("cache: redis at %s failed during %s (%s); cache lookups are misses for %.1fs",
                            redact_url(self.cfg.url), op, self.last_error, self.cfg.retry_interval_s)
            raise RedisUnavailable(self.last_error) from None

    def _ok(self) -> None:
        if self.last_error is not None:
            log.warning("cache: redis reachable again")
            self.last_error = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass  # the shared client is closed by shipyard.shared.redis.close_clients

    async def get(self, key: str) -> bytes | None:
        value = await self._call("get", lambda: self.client.get(self._k("e", key)))
        self._ok()
        return value

    async def set(self, key: str, value: bytes, ttl_s: float, context: str | None = None) -> None:
        ms = max(1, int(math.ceil(ttl_s * 1000)))
        await self._call("set", lambda: self.client.set(self._k("e", key), value, px=ms))
        self._ok()

    async def delete(self, key: str, context: str | None = None) -> None:
        async def _delete() -> None:
            async with self.client.pipeline(transaction=False) as p:
                p.delete(self._k("e", key))
                if context is not None:
                    p.hdel(self._k("v", context), key)
                await p.execute()

        await self._call("delete", _delete)

    async def vectors(self, context: str) -> list[tuple[str, bytes]]:
        raw = await self._call("hgetall", lambda: self.client.hgetall(self._k("v", context)))
        self._ok()
        return [(k.decode() if isinstance(k, bytes) else k, v) for k, v in (raw or {}).items()]

    async def add_vector(self, context: str, key: str, record: bytes, ttl_s: float, limit: int) -> None:
        name = self._k("v", context)
        ms = max(1, int(math.ceil(ttl_s * 1000)))

        async def _add() -> None:
            async with self.client.pipeline(transaction=False) as p:
                p.hset(name, key, record)
                p.pexpire(name, ms)
                p.hlen(name)
                _, _, n = await p.execute()
            if n > limit:  # drop arbitrary others (a hash has no order)
                extra = await self.client.hrandfield(name, n - limit)
                extra = [f for f in (extra or []) if (f.decode() if isinstance(f, bytes) else f) != key]
                if extra:
                    await self.client.hdel(name, *extra)

        await self._call("add_vector", _add)

    async def clear(self) -> None:
        async def _clear() -> None:
            batch: list[Any] = []
            async for k in self.client.scan_iter(match=f"{self.prefix}:*", count=500):
                batch.append(k)
                if len(batch) >= 500:
                    await self.client.delete(*batch)
                    batch = []
            if batch:
                await self.client.delete(*batch)

        await self._call("clear", _clear)

    def stats(self) -> dict[str, Any]:
        from ..shared.redis import redact_url

        return {"backend": self.name, "url": redact_url(self.cfg.url), "errors": self.errors,
                "ok": self.last_error is None}
