"""SQLite store: WAL mode, one writer and one reader connection, a checkpointer thread, and
an FTS5 search index in a file of its own with a thread of its own (sqlite_search.py).

A span's rowid is its time id (start time in milliseconds << 12, plus low bits): the spans
table is laid out in time order and the contentless FTS5 index, keyed by the same rowid,
bounds every search by the time window itself (see schema.py).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .migrations import CREATE_TABLE
from .schema import TIME_ID_SHIFT, time_id_floor
from .sql import SPAN_COLUMNS, SQLITE, SQLStore, _in
from .sqlite_search import SearchIndex, fts_query, span_docs

# Free-text search (SQLStore._search): terms in more spans than this are "common".
SPARSE_TERM_DOCS = 20_000
# The WAL is copied back into the database file by a thread of its own once it holds this
# much (a commit then only appends to the WAL); past WAL_MAX_BYTES the writer does it itself,
# waiting for it. Under sustained ingest the checkpointer shares 2 cores with the writer and
# the search index and falls behind: at 256 MB the writer stopped ~180 times over 1,000,000
# spans (14 s of 225), at 1 GB ~25 times (2.5 s). The WAL is only that big under such load.
WAL_CHECKPOINT_BYTES = 40 << 20
WAL_MAX_BYTES = 1 << 30
# A search first waits this long for the index to catch up with what this process wrote.
SEARCH_WAIT_S = 10.0


DEFAULT_CACHE_MB = 32  # page cache of both connections: 3/4 for the writer, 1/4 for the reader


def _path(url: str) -> str:
    if url == ":memory:":
        return ":memory:"
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
    return path.split("?", 1)[0] or ":memory:"


def _cache_mb(url: str) -> int:
    """``?cache_mb=N`` on the URL: SQLite's page cache in MiB (it counts in the process's
    memory; a bigger one speeds up bulk ingest)."""
    from urllib.parse import parse_qs

    query = url.split("?", 1)[1] if "?" in url else ""
    params = parse_qs(query, keep_blank_values=True)
    unknown = set(params) - {"cache_mb"}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} (supported: cache_mb)")
    raw = params.get("cache_mb", [str(DEFAULT_CACHE_MB)])[-1]
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"cache_mb must be a whole number of MiB >= 1, got {raw!r}")
    return int(raw)


def split_script(script: str) -> list[str]:
    """Statements of a SQL script (semicolons inside triggers and strings respected)."""
    out, buf = [], ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                out.append(buf)
            buf = ""
    if buf.strip(" \t\r\n;"):
        out.append(buf)
    return out


class _Checkpointer:
    """Checkpoints the WAL beside the writer, on a connection and thread of its own: PASSIVE
    checkpoints never wait for nor block the writer, and SQLite runs them without the GIL, so
    copying pages back to the database file and syncing it happen off the write path (as
    PostgreSQL's checkpointer does)."""

    def __init__(self, path: str) -> None:
        self.wal = path + "-wal"
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="shipyard-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def wal_bytes(self) -> int:
        try:
            return os.stat(self.wal).st_size
        except OSError:
            return 0

    def nudge(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(5.0)
            self._wake.clear()
            if self._stopping:
                break
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(60)
        self._conn.close()


def _switch_to_wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """WAL mode. Switching needs a moment of exclusive access, and SQLite does not always
    run the busy handler for it: processes starting together retry here instead of failing
    with "database is locked"."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SQLiteStore(SQLStore):
    """Thread-safe: writes go through one connection under a lock (the recorder's thread),
    reads through another (WAL lets them run side by side). ``:memory:`` uses one."""

    dialect = SQLITE

    def __init__(self, url: str) -> None:
        super().__init__()
        self.path = _path(url)
        self.cache_kib = _cache_mb(url) * 1024
        memory = self.path == ":memory:"
        if not memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._wconn = self._connect(wal=not memory)
        self._wlock = threading.Lock()
        self._checkpointer = None if memory else _Checkpointer(self.path)
        if memory:
            self._rconn, self._rlock = self._wconn, self._wlock
        else:
            self._rconn, self._rlock = self._connect(wal=False), threading.Lock()
        self._conn, self._lock = self._wconn, self._wlock  # the writer, under the names of 0.1
        self._seq = 0  # low bits of time ids
        self._to_index: list[tuple[int, str]] = []  # documents of the open transaction
        self._unindexed = False  # the open transaction took documents out of the index
        self.migrate()
        self._fts = self._open_search(memory)

    def _open_search(self, memory: bool) -> SearchIndex:
        if memory:
            self._wconn.execute("ATTACH DATABASE ':memory:' AS search")
            return SearchIndex(self._wconn, "search", threaded=False, read_spans=lambda: self._wconn)
        path = self.path + "-search"
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        _switch_to_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA cache_size=-{max(2048, self.cache_kib // 4)}")
        with self._rlock:
            self._rconn.execute("ATTACH DATABASE ? AS search", (path,))
        return SearchIndex(conn, "main", threaded=True, read_spans=lambda: self._connect(wal=False))

    def wait_for_search_index(self, timeout: float = 600.0) -> bool:
        """Wait until every span written so far by this store is searchable."""
        return self._fts.catch_up(timeout)

    def _connect(self, wal: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        if wal:  # the writer
            _switch_to_wal(conn)
            # index pages keyed by random ids (span, trace) are rewritten by most batches: a
            # bigger cache writes each of them back less often
            conn.execute(f"PRAGMA cache_size=-{self.cache_kib * 3 // 4}")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # see _Checkpointer
            # a restarted WAL is cut back to this size, so its size tells how much it holds
            conn.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_BYTES}")
        else:
            conn.execute(f"PRAGMA cache_size=-{max(1024, self.cache_kib // 4)}")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    # ---- connections --------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        with self._rlock:
            yield self._rconn.cursor()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        with self._wlock:
            conn = self._wconn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn.cursor()
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._to_index = []
                if self._unindexed:  # spans kept whose documents are gone: index them again
                    self._unindexed = False
                    self._fts.repair_soon()
                raise
            conn.execute("COMMIT")
            self._unindexed = False
            if self._to_index:
                docs, self._to_index = self._to_index, []
                self._fts.add(docs)
            if self._checkpointer is not None:
                wal = self._checkpointer.wal_bytes()
                if wal > WAL_MAX_BYTES:  # the checkpointer falls behind: catch up here, and
                    # restart the WAL from its start
                    conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                elif wal > WAL_CHECKPOINT_BYTES:
                    self._checkpointer.nudge()

    @contextmanager
    def _migration(self) -> Iterator[sqlite3.Cursor]:
        # BEGIN IMMEDIATE takes the database's write lock: a second process starting at the
        # same time waits (busy_timeout), then finds the steps recorded and skips them.
        with self._write() as cur:
            cols = [r[1] for r in cur.execute("PRAGMA table_info(schema_migrations)")]
            if cols and "component" not in cols:  # the single-list layout of shipyard 0.1
                cur.execute("ALTER TABLE schema_migrations RENAME TO schema_migrations_v0")
                cur.execute(CREATE_TABLE)
                cur.execute("INSERT INTO schema_migrations (component, version, applied_at) "
                            "SELECT 'traces', version, COALESCE(applied_at, 0) FROM schema_migrations_v0")
                cur.execute("DROP TABLE schema_migrations_v0")
            yield cur

    def _execute_script(self, cur: sqlite3.Cursor, sql: str) -> None:
        for stmt in split_script(sql):
            cur.execute(stmt)

    # ---- writes -------------------------------------------------------------------
    _INSERT = (
        f"INSERT INTO spans (rowid, {', '.join(SPAN_COLUMNS)}) VALUES (?, {', '.join('?' * len(SPAN_COLUMNS))}) "
        "ON CONFLICT (span_id) DO NOTHING"
    )
    _LOW_BITS = (1 << TIME_ID_SHIFT) - 1

    def _insert_spans(self, cur: sqlite3.Cursor, rows: list[tuple]) -> list[tuple[int, Any]]:
        new = []
        for i, row in enumerate(rows):
            self._seq = (self._seq + 1) & self._LOW_BITS
            rowid = time_id_floor(row[5]) | self._seq
            while True:
                try:
                    cur.execute(self._INSERT, (rowid, *row))
                    break
                except sqlite3.IntegrityError:
                    # the time id is taken (another span of that millisecond): the first one
                    # after the last taken in that millisecond
                    taken = cur.execute("SELECT MAX(rowid) FROM spans WHERE rowid >= ? AND rowid <= ?",
                                        (rowid, rowid | self._LOW_BITS)).fetchone()[0]
                    if taken is None:  # not a time id clash after all
                        raise
                    rowid = taken + 1
            if cur.rowcount == 1:
                new.append((i, rowid))
        return new

    def _index_text(self, cur: sqlite3.Cursor, rows: list[tuple], new: list[tuple[int, Any]]) -> None:
        docs = span_docs((rowid, rows[i][-2], rows[i][-1]) for i, rowid in new)
        if self._fts.threaded:
            self._to_index += docs  # indexed once committed (_write)
        else:
            self._fts.add(docs, cur)

    def _unindex_text(self, cur: sqlite3.Cursor, trace_ids: list[str]) -> None:
        # a contentless FTS5 index forgets a document only when told the exact text it indexed
        cur.execute(f"SELECT rowid, input, output FROM spans WHERE trace_id IN {_in(trace_ids)}", trace_ids)
        self._unindexed = True
        self._fts.remove(span_docs(cur.fetchall()), cur)

    # ---- search -------------------------------------------------------------------
    def _search(self, cur: sqlite3.Cursor, where: list[str], args: list[Any], terms: list[str],
                since: float, limit: int) -> list[dict[str, Any]]:
        self._fts.catch_up(SEARCH_WAIT_S)  # what this process wrote is found
        return super()._search(cur, where, args, terms, since, limit)

    def _match_in(self, terms: list[str], since: float) -> tuple[str, list[Any]]:
        # the FTS rowid is the span's time id: the window bounds the index scan itself
        return ("t.trace_id IN (SELECT s.trace_id FROM search.spans_fts f JOIN spans s ON s.rowid = f.rowid "
                "WHERE f.spans_fts MATCH ? AND f.rowid >= ?)", [fts_query(terms), time_id_floor(since)])

    def _match_exists(self, terms: list[str]) -> tuple[str, list[Any]]:
        return ("EXISTS (SELECT 1 FROM spans s JOIN search.spans_fts f ON f.rowid = s.rowid "
                "WHERE s.trace_id = t.trace_id AND f.spans_fts MATCH ?)", [fts_query(terms)])

    def _common(self, cur: sqlite3.Cursor, terms: list[str], since: float) -> bool:
        # spans holding the rarest word, over all time (the vocabulary keeps no times)
        words = fts_query(terms).replace('"', "").split()
        cur.execute(f"SELECT term, doc FROM search.spans_fts_vocab WHERE term IN {_in(words)}", words)
        docs = dict(cur.fetchall())
        return min(docs.get(w, 0) for w in words) > SPARSE_TERM_DOCS

    # ---- lifecycle ----------------------------------------------------------------
    def ping(self) -> bool:
        try:
            with self._rlock:
                self._rconn.execute("SELECT 1")
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        self._fts.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._wlock:
            try:
                self._wconn.execute("PRAGMA analysis_limit=1000")
                self._wconn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass
            self._wconn.close()
        if self._rconn is not self._wconn:
            with self._rlock:
                self._rconn.close()
