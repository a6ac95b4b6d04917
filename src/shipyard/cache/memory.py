"""In-process cache backend: an LRU bounded by entries and bytes, with a TTL per entry.

One replica only (each process has its own); the default. Semantic vectors of an entry
go with it when it expires or is evicted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class MemoryBackend:
    name = "memory"

    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes, str | None]] = OrderedDict()
        self._vectors: dict[str, OrderedDict[str, tuple[float, bytes]]] = {}
        self.bytes = 0
        self.evictions = 0
        self.expirations = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _drop(self, key: str) -> None:
        _, value, context = self._entries.pop(key)
        self.bytes -= len(value)
        if context is not None:
            self._drop_vector(context, key)

    def _drop_vector(self, context: str, key: str) -> None:
        vecs = self._vectors.get(context)
        if vecs is None:
            return
        item = vecs.pop(key, None)
        if item is not None:
            self.bytes -= len(item[1])
        if not vecs:
            del self._vectors[context]

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        if item[0] <= self.clock():
            self._drop(key)
            self.expirations += 1
            return None
        self._entries.move_to_end(key)
        return item[1]

    async def set(self, key: str, value: bytes, ttl_s: float, context: str | None = None) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self.clock() + ttl_s, value, context)
        self.bytes += len(value)
        now = self.clock()
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            expired = self._entries[oldest][0] <= now
            self._drop(oldest)
            if expired:
                self.expirations += 1
            else:
                self.evictions += 1

    async def delete(self, key: str, context: str | None = None) -> None:
        if key in self._entries:
            self._drop(key)
        elif context is not None:
            self._drop_vector(context, key)

    async def vectors(self, context: str) -> list[tuple[str, bytes]]:
        vecs = self._vectors.get(context)
        if not vecs:
            return []
        now = self.clock()
        return [(k, rec) for k, (exp, rec) in vecs.items() if exp > now]

    async def add_vector(self, context: str, key: str, record: bytes, ttl_s: float, limit: int) -> None:
        entry = self._entries.get(key)
        if entry is None or entry[2] != context:
            return  # vectors live with their entry
        vecs = self._vectors.setdefault(context, OrderedDict())
        if key not in vecs:
            self.bytes += len(record)
        else:
            self.bytes -= len(vecs[key][1]) - len(record)
        vecs[key] = (self.clock() + ttl_s, record)
        vecs.move_to_end(key)
        while len(vecs) > limit:
            _, (_, rec) = vecs.popitem(last=False)
            self.bytes -= len(rec)

    async def clear(self) -> None:
        self._entries.clear()
        self._vectors.clear()
        self.bytes = 0

    def stats(self) -> dict[str, Any]:
        return {"backend": self.name, "entries": len(self._entries), "bytes": self.bytes,
                "evictions": self.evictions, "expirations": self.expirations}
