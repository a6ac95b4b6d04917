"""The SQLite store's free-text index: FTS5 in a file of its own beside the database
(``<database>-search``), written by a thread of its own.

Why a file of its own: SQLite lets one writer at a time into a database, and the index (a
posting for every distinct word of every span) costs as much to write as the spans, their
indexes and summaries together. In a second file it has a lock of its own, and SQLite writes
it without holding Python's GIL: the index of one batch is written on one core while the
store writes the next batch of spans on the other.

What the store promises:

- A span is committed first and indexed a moment later. In the process that wrote it, a
  search first waits for the index to catch up (``catch_up``), so a process always finds what
  it wrote; another process reading the same database may see it a batch later.
- The index holds one document per span (spans without text get an empty one), so "span X is
  indexed" is a row of ``spans_fts_docsize``. Every write checks that first: two processes on
  one database, or a repair racing the writer, never index a span twice nor forget one that
  was never indexed (either would corrupt a contentless FTS5 index).
- At open, after a failed index write, and whenever the file is new (a database from before
  this layout, or a deleted index), the index is compared with the spans and what is missing
  is indexed in the background (``repair``).

The text is normalised in Python (``search.fts_text``: lower-cased words separated by spaces)
and split by FTS5's ``ascii`` tokenizer, which is ~30% cheaper than ``unicode61``; queries
are normalised the same way (``fts_query``).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from typing import Callable, Iterable

from .search import fts_text, search_text

log = logging.getLogger("shipyard.store")

FTS_CHUNK = 2_000  # documents per statement (FTS5 flushes its pending terms at every statement)
QUEUE_JOBS = 4  # batches waiting for the index before the writer waits (back-pressure)
REPAIR_CHUNK = 500  # spans read and indexed per transaction while repairing
RETRY_MAX_S = 30.0

SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS {s}.spans_fts USING fts5(
    body, content='', detail=none, tokenize='ascii');
CREATE VIRTUAL TABLE IF NOT EXISTS {s}.spans_fts_vocab USING fts5vocab(spans_fts, 'row');
"""


def fts_query(terms: list[str]) -> str:
    """An FTS5 query requiring every word of every term (each quoted: a single token)."""
    words = dict.fromkeys(w for t in terms for w in fts_text(t).split())
    return " ".join(f'"{w}"' for w in words)


def span_docs(rows: Iterable[tuple[int, str | None, str | None]]) -> list[tuple[int, str]]:
    """(rowid, indexed text) of spans given as (rowid, input JSON, output JSON)."""
    return [(rowid, fts_text(search_text(inp, out)) if inp is not None or out is not None else "")
            for rowid, inp, out in rows]


class SearchIndex:
    """The index of one store. ``conn``/``schema``: where the FTS5 tables live; ``threaded``:
    writes go through a queue to a thread of its own (file databases) or happen at once on the
    store's only connection (``:memory:``). ``read_spans`` opens a connection that reads the
    spans (for repairs)."""

    def __init__(self, conn: sqlite3.Connection, schema: str, *, threaded: bool,
                 read_spans: Callable[[], sqlite3.Connection]) -> None:
        self._conn = conn
        self._s = schema
        self._read_spans = read_spans
        self.threaded = threaded
        for stmt in SCHEMA.format(s=schema).strip().split(";\n"):
            if stmt.strip():
                conn.execute(stmt)
        self._queue: queue.Queue = queue.Queue(QUEUE_JOBS)
        self._cond = threading.Condition()
        self._submitted = self._covered = 0
        self._failing = False
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="shipyard-sqlite-search", daemon=True)
            self._thread.start()
            self._submit(("repair", None))

    # ---- what the store calls -------------------------------------------------------
    def add(self, docs: list[tuple[int, str]], cur: sqlite3.Cursor | None = None) -> None:
        """Index committed spans. Threaded: queued (waits while QUEUE_JOBS batches wait);
        otherwise written at once with ``cur``, inside the caller's transaction."""
        if not docs:
            return
        if self.threaded:
            self._submit(("add", docs))
        else:
            self._apply(cur or self._conn.cursor(), "add", docs)

    def remove(self, docs: list[tuple[int, str]], cur: sqlite3.Cursor | None = None) -> None:
        """Un-index spans about to be deleted (exactly the text they were indexed with);
        returns when done, raises if it failed."""
        if not docs:
            return
        if not self.threaded:
            self._apply(cur or self._conn.cursor(), "delete", docs)
            return
        result: dict[str, BaseException | None] = {}
        done = threading.Event()
        self._submit(("delete", (docs, result, done)))
        done.wait()
        if result.get("error") is not None:
            raise result["error"]  # type: ignore[misc]

    def catch_up(self, timeout: float) -> bool:
        """Wait until everything submitted so far is indexed (at most ``timeout`` seconds)."""
        if not self.threaded:
            return True
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._covered >= target, timeout)

    def repair_soon(self) -> None:
        """Compare the index with the spans and index what is missing (in the background)."""
        if self.threaded:
            self._submit(("repair", None))

    def integrity_check(self) -> None:
        """Raise sqlite3.DatabaseError if the index is inconsistent (after catching up)."""
        self.catch_up(600.0)
        self._conn.execute(f"INSERT INTO {self._s}.spans_fts(spans_fts) VALUES ('integrity-check')")

    def close(self, timeout: float = 300.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        if self.threaded:
            self._conn.close()

    # ---- the thread -----------------------------------------------------------------
    # Jobs are numbered as submitted; ``_covered`` is the number up to which every span is
    # indexed (a job done, or a repair that started after it was submitted).
    def _submit(self, job: tuple) -> None:
        with self._cond:
            self._submitted += 1
            seq = self._submitted
        self._queue.put((*job, seq))

    def _run(self) -> None:
        delay = 1.0
        while True:
            job = self._queue.get()
            if job is None:
                return
            kind, payload, seq = job
            covered = 0
            try:
                if kind == "delete":
                    docs, result, done = payload
                    try:
                        self._transaction("delete", docs)
                        result["error"] = None
                    except BaseException as exc:  # told to the caller, whose purge then rolls back
                        result["error"] = exc
                    finally:
                        done.set()
                    covered = seq
                elif self._failing or kind == "repair":
                    with self._cond:
                        snapshot = self._submitted  # spans of these jobs are committed: covered
                    self._repair()
                    self._failing, delay, covered = False, 1.0, max(seq, snapshot)
                else:
                    self._transaction("add", payload)
                    covered = seq
            except Exception as exc:
                if not self._failing:
                    log.error("search index: writing failed (%s); spans stay stored and are indexed "
                              "once it works again", exc)
                self._failing = True
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                if self._queue.empty():  # try again even if nothing else comes
                    try:
                        self._queue.put_nowait(("repair", None, 0))
                    except queue.Full:
                        pass  # the jobs waiting will repair
            finally:
                with self._cond:
                    self._covered = max(self._covered, covered)
                    self._cond.notify_all()

    def _transaction(self, kind: str, docs: list[tuple[int, str]]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._apply(conn.cursor(), kind, docs)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _apply(self, cur: sqlite3.Cursor, kind: str, docs: list[tuple[int, str]]) -> None:
        """Add (documents not yet indexed) or delete (documents indexed) in FTS_CHUNKs."""
        s = self._s
        command = "NULL" if kind == "add" else "'delete'"
        for k in range(0, len(docs), FTS_CHUNK):
            chunk = docs[k:k + FTS_CHUNK]
            ids = [d[0] for d in chunk]
            cur.execute(f"SELECT id FROM {s}.spans_fts_docsize WHERE id IN ({', '.join('?' * len(ids))})", ids)
            indexed = {r[0] for r in cur.fetchall()}
            chunk = [d for d in chunk if (d[0] in indexed) == (kind == "delete")]
            if chunk:
                values = ", ".join([f"({command}, ?, ?)"] * len(chunk))
                cur.execute(f"INSERT INTO {s}.spans_fts(spans_fts, rowid, body) VALUES {values}",
                            [v for doc in chunk for v in doc])

    # ---- repair ---------------------------------------------------------------------
    def missing(self, spans: sqlite3.Connection) -> tuple[list[int], int]:
        """(rowids of spans not indexed, number of index documents without a span)."""
        (n_spans,) = spans.execute("SELECT count(*) FROM spans").fetchone()
        (n_docs,) = self._conn.execute(f"SELECT count(*) FROM {self._s}.spans_fts_docsize").fetchone()
        if n_spans == n_docs:
            return [], 0
        # both sides in rowid order, walked together (the span ids come from an index)
        span_ids = sorted(r[0] for r in spans.execute("SELECT rowid FROM spans INDEXED BY spans_time"))
        docs = self._conn.execute(f"SELECT id FROM {self._s}.spans_fts_docsize ORDER BY id")
        missing, orphans = [], 0
        doc = next(docs, None)
        for rowid in span_ids:
            while doc is not None and doc[0] < rowid:
                orphans += 1
                doc = next(docs, None)
            if doc is not None and doc[0] == rowid:
                doc = next(docs, None)
            else:
                missing.append(rowid)
        orphans += sum(1 for _ in docs) + (doc is not None)
        return missing, orphans

    def _repair(self) -> None:
        spans = self._read_spans()
        try:
            missing, orphans = self.missing(spans)
            if orphans:
                log.warning("search index: %d entries of spans no longer stored (a crash between a purge "
                            "of two processes); searches ignore them", orphans)
            if not missing:
                return
            log.info("search index: indexing %d spans not yet indexed", len(missing))
            for k in range(0, len(missing), REPAIR_CHUNK):
                ids = missing[k:k + REPAIR_CHUNK]
                rows = spans.execute(f"SELECT rowid, input, output FROM spans WHERE rowid IN "
                                     f"({', '.join('?' * len(ids))})", ids).fetchall()
                self._transaction("add", span_docs(rows))
            log.info("search index: up to date")
        finally:
            spans.close()
