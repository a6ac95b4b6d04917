"""SQLite cache backend: its own database file (``cache.path``), WAL mode.

Survives restarts and can be shared by the processes of one host. Every call runs on one
worker thread, so the event loop never blocks on the file. Expired rows are removed and
the table is trimmed to ``max_entries`` (oldest first) every ``TRIM_EVERY`` writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
TRIM_EVERY = 200

SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    context TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_entries_expires ON cache_entries(expires_at);
CREATE INDEX IF NOT EXISTS cache_entries_created ON cache_entries(created_at);
CREATE TABLE IF NOT EXISTS cache_vectors (
    context TEXT NOT NULL,
    key TEXT NOT NULL,
    record BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (context, key)
);
CREATE INDEX IF NOT EXISTS cache_vectors_key ON cache_vectors(key);
"""


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, path: str, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_entries = max_entries
        self.clock = clock
        self._pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._writes = 0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="shipyard-cache-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self) -> None:
        if self._conn is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=5000")
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        self._conn = conn

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._open()
        assert self._conn is not None
        return self._conn

    async def start(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        if self._pool is None:
            return
        await self._run(_close)
        pool, self._pool = self._pool, None
        pool.shutdown(wait=True)

    async def get(self, key: str) -> bytes | None:
        def _get() -> bytes | None:
            row = self.conn.execute("SELECT value FROM cache_entries WHERE key = ? AND expires_at > ?",
                                    (key, self.clock())).fetchone()
            return bytes(row[0]) if row else None

        return await self._run(_get)

    async def set(self, key: str, value: bytes, ttl_s: float, context: str | None = None) -> None:
        def _set() -> None:
            now = self.clock()
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("DELETE FROM cache_vectors WHERE key = ?", (key,))
                c.execute("INSERT OR REPLACE INTO cache_entries (key, value, context, created_at, expires_at) "
                          "VALUES (?, ?, ?, ?, ?)", (key, value, context, now, now + ttl_s))
                self._writes += 1
                if self._writes % TRIM_EVERY == 0:
                    self._trim(c, now)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self._run(_set)

    def _trim(self, c: sqlite3.Connection, now: float) -> None:
        c.execute("DELETE FROM cache_vectors WHERE expires_at <= ?", (now,))
        c.execute("DELETE FROM cache_vectors WHERE key IN (SELECT key FROM cache_entries WHERE expires_at <= ?)",
                  (now,))
        c.execute("DELETE FROM cache_entries WHERE expires_at <= ?", (now,))
        (n,) = c.execute("SELECT COUNT(*) FROM cache_entries").fetchone()
        if n > self.max_entries:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS cache_trim (key TEXT PRIMARY KEY)")
            c.execute("DELETE FROM cache_trim")
            c.execute("INSERT INTO cache_trim SELECT key FROM cache_entries ORDER BY created_at LIMIT ?",
                      (n - self.max_entries,))
            c.execute("DELETE FROM cache_vectors WHERE key IN (SELECT key FROM cache_trim)")
            c.execute("DELETE FROM cache_entries WHERE key IN (SELECT key FROM cache_trim)")

    async def trim(self) -> None:
        def _do() -> None:
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                self._trim(c, self.clock())
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self._run(_do)

    async def delete(self, key: str, context: str | None = None) -> None:
        def _delete() -> None:
            self.conn.execute("DELETE FROM cache_vectors WHERE key = ?", (key,))
            self.conn.execute("DELETE FROM cache_entries WHERE key = ?", (key,))

        await self._run(_delete)

    async def vectors(self, context: str) -> list[tuple[str, bytes]]:
        def _vectors() -> list[tuple[str, bytes]]:
            rows = self.conn.execute("SELECT key, record FROM cache_vectors WHERE context = ? AND expires_at > ?",
                                     (context, self.clock())).fetchall()
            return [(k, bytes(r)) for k, r in rows]

        return await self._run(_vectors)

    async def add_vector(self, context: str, key: str, record: bytes, ttl_s: float, limit: int) -> None:
        def _add() -> None:
            now = self.clock()
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("INSERT OR REPLACE INTO cache_vectors (context, key, record, created_at, expires_at) "
                          "VALUES (?, ?, ?, ?, ?)", (context, key, record, now, now + ttl_s))
                (n,) = c.execute("SELECT COUNT(*) FROM cache_vectors WHERE context = ?", (context,)).fetchone()
                if n > limit:
                    c.execute("DELETE FROM cache_vectors WHERE context = ? AND key IN (SELECT key FROM cache_vectors "
                              "WHERE context = ? ORDER BY created_at LIMIT ?)", (context, context, n - limit))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self._run(_add)

    async def clear(self) -> None:
        def _clear() -> None:
            self.conn.execute("DELETE FROM cache_vectors")
            self.conn.execute("DELETE FROM cache_entries")

        await self._run(_clear)

    def stats(self) -> dict[str, Any]:
        return {"backend": self.name, "path": self.path}
