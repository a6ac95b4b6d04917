"""Circuit-breaker state shared by replicas through Redis.

Each replica keeps its breakers in memory (``routing/breaker.py``: the request path never
waits on Redis). What is shared are transitions: when a breaker opens or closes here, the
transition is written to the hash ``{prefix}:breakers`` (field = target, value = JSON
``{"state", "until", "at", "by"}``), and every replica reads that hash every
``redis.breaker_sync_s`` and applies transitions newer than the last it saw. So a target
that one replica finds failing is skipped by all of them within about a second, for the
rest of the cool-down, and a successful probe anywhere closes it everywhere. Failure
counts stay per replica. With Redis unreachable, breakers simply work per replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import orjson

from ..routing.breaker import CLOSED, OPEN
from .redis import RedisUnavailable, key

log = logging.getLogger("shipyard.shared")


class SharedBreakers:
    def __init__(self, breakers: dict[str, Any], link: Any) -> None:
        self.breakers = breakers
        self.link = link
        self.hash = key(link.cfg, "breakers")
        self.replica = f"{os.uname().nodename}:{os.getpid()}"
        self._seen: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.published = 0
        self.applied = 0
        self._names = {id(b): t for t, b in breakers.items()}

    def attach(self) -> None:
        for b in self.breakers.values():
            b.on_change = self._changed

    def detach(self) -> None:
        for b in self.breakers.values():
            if b.on_change == self._changed:
                b.on_change = None

    # ---- local transitions -> Redis ----------------------------------------------------
    def _changed(self, breaker: Any, state: str) -> None:
        target = self._names.get(id(breaker))
        if target is None:
            return
        now = time.time()
        until = now + breaker.retry_in() if state == OPEN else now
        self._seen[target] = now
        value = orjson.dumps({"state": state, "until": until, "at": now, "by": self.replica})
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._publish(target, value))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, target: str, value: bytes) -> None:
        try:
            await self.link.run("breaker publish", lambda: self.link.client.hset(self.hash, target, value))
            self.published += 1
        except RedisUnavailable:
            pass

    # ---- Redis -> local breakers -------------------------------------------------------
    async def sync_once(self) -> int:
        raw = await self.link.run("breaker sync", lambda: self.link.client.hgetall(self.hash))
        now = time.time()
        n = 0
        for field, value in raw.items():
            target = field.decode() if isinstance(field, bytes) else field
            breaker = self.breakers.get(target)
            if breaker is None:
                continue
            try:
                d = orjson.loads(value)
                at = float(d["at"])
            except (ValueError, KeyError, TypeError):
                continue
            if at <= self._seen.get(target, 0.0):
                continue
            self._seen[target] = at
            if d.get("state") == OPEN:
                breaker.apply_remote(OPEN, float(d.get("until", 0)) - now)
            elif d.get("state") == CLOSED:
                breaker.apply_remote(CLOSED)
            n += 1
        self.applied += n
        return n

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except RedisUnavailable:
                pass
            except Exception:  # pragma: no cover - a bug, not an outage
                log.exception("breaker sync failed")
            await asyncio.sleep(self.link.cfg.breaker_sync_s)

    def stats(self) -> dict[str, Any]:
        return {"published": self.published, "applied": self.applied}
