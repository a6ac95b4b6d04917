"""The backend interface of the response cache, and how vectors are packed.

A backend stores opaque entries (bytes) under an exact key with a TTL, and for the
semantic cache a small set of (key → packed vector) records per context. All methods are
async; a backend never raises for a missing key (None / empty), and the cache treats any
exception or timeout as a miss (a slow or broken cache must never fail a request).
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

import numpy as np


class CacheBackend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float, context: str | None = None) -> None: ...

    async def delete(self, key: str, context: str | None = None) -> None:
        """Forget an entry (and its vector in ``context``)."""

    async def vectors(self, context: str) -> list[tuple[str, bytes]]:
        """The (key, packed vector) records of a semantic context, live ones only."""

    async def add_vector(self, context: str, key: str, record: bytes, ttl_s: float, limit: int) -> None:
        """Remember a vector; a context holds at most ``limit`` (the oldest go first)."""

    async def clear(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def pack_vector(text: str, vec: np.ndarray) -> bytes:
    """A semantic record: the compared text (the term check needs it) and the vector."""
    t = text.encode("utf-8")
    return struct.pack("<I", len(t)) + t + np.asarray(vec, dtype="<f4").tobytes()


def unpack_vector(record: bytes) -> tuple[str, np.ndarray]:
    (n,) = struct.unpack_from("<I", record)
    text = record[4:4 + n].decode("utf-8")
    vec = np.frombuffer(record, dtype="<f4", offset=4 + n)
    return text, vec
