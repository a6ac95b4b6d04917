"""PostgreSQL store (psycopg 3): a small connection pool, batched writes, tsvector search.

Selected by ``store: postgresql://user:pass@host:port/db`` (or ``postgres://``); any libpq
URI parameter (``?sslmode=require``, ``?options=-csearch_path%3Dshipyard``) passes through.
Needs the ``postgres`` extra: ``pip install 'shipyard[postgres]'``.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError
from .base import StoreUnavailable
from .search import search_lexemes
from .sql import POSTGRESQL, SPAN_COLUMNS, UPSERTS, SQLStore, _in

try:  # psycopg is an optional dependency: PostgresStore says so when it is missing
    from psycopg.adapt import Dumper
    from psycopg.pq import Format
except ImportError:  # pragma: no cover
    Dumper, Format = object, None  # type: ignore[assignment,misc]

MIGRATION_LOCK = int.from_bytes(b"Shipyard", "big")  # pg_advisory_xact_lock key
SPARSE_MATCHES = 5_000  # free-text search: more matching spans in the window is "common"
TSVECTOR_OID = 3614

_FLOAT = {"start_time", "end_time", "duration_ms", "cost_usd", "ttft_ms"}
_INT = {"input_tokens", "output_tokens", "cached_tokens"}
_TYPES = tuple("float8" if c in _FLOAT else "int4" if c in _INT else "text" for c in SPAN_COLUMNS)


def _unnest(types: tuple[str, ...]) -> str:
    return "unnest(" + ", ".join(f"%b::{t}[]" for t in types) + ")"


def _columns(rows: list[Any], types: tuple[str, ...]) -> list[list[Any]]:
    """Rows as one list per column, each value of the column's Python type (a binary array
    holds one element type)."""
    out: list[list[Any]] = []
    for j, t in enumerate(types):
        if t == "float8":
            out.append([None if r[j] is None else float(r[j]) for r in rows])
        elif t in ("int4", "int8"):
            out.append([None if r[j] is None else int(r[j]) for r in rows])
        else:
            out.append([r[j] for r in rows])
    return out


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def conninfo(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if not url.startswith("postgresql://"):
        raise ConfigError(f"store: not a PostgreSQL URL: {redact_url(url)!r}")
    return url


def _text(v: Any) -> Any:
    # PostgreSQL text cannot hold NUL characters
    if isinstance(v, str) and "\x00" in v:
        return v.replace("\x00", "\ufffd")
    return v


class TsVector(bytes):
    """A tsvector in PostgreSQL's binary wire format (``tsvectorrecv``): sent as is, it is
    several times cheaper for the server than parsing tsvector text."""


def tsvector_binary(words: Iterable[bytes]) -> TsVector:
    """Lexemes without positions: count, then each as NUL-terminated UTF-8 and a zero
    position count. The server sorts them (the order is not PostgreSQL's, nor need it be)."""
    words = list(words)
    if not words:
        return TsVector(b"\x00\x00\x00\x00")
    return TsVector(struct.pack("!i", len(words)) + b"\x00\x00\x00".join(words) + b"\x00\x00\x00")


class _TsVectorDumper(Dumper):
    format = Format.BINARY
    oid = TSVECTOR_OID

    def dump(self, obj: Any) -> bytes:
        return obj


def tsquery_literal(terms: list[str]) -> str:
    return " & ".join(terms)


def _search_vectors(rows: list[tuple]) -> list[TsVector | None]:
    """Each span row's search vector (None: no words)."""
    out: list[TsVector | None] = []
    for r in rows:
        words = search_lexemes(r[-2], r[-1]) if r[-2] is not None or r[-1] is not None else None
        out.append(tsvector_binary(words) if words else None)
    return out


def _configure(conn: Any) -> None:
    conn.adapters.register_dumper(TsVector, _TsVectorDumper)


class PostgresStore(SQLStore):
    """Thread-safe through a connection pool: the recorder's writer and any number of readers
    (CLI, UI, API threads) each borrow a connection for one call."""

    dialect = POSTGRESQL

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 10.0) -> None:
        super().__init__()
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise ConfigError(
                "store: a postgresql:// store needs psycopg 3: pip install 'shipyard[postgres]'"
            ) from None
        self.url = redact_url(url)
        info = conninfo(url)
        self._timeout = timeout
        try:  # fail now, with the server's own reason, rather than after a pool timeout
            psycopg.connect(info, connect_timeout=max(1, int(timeout))).close()
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())
            raise StoreUnavailable(f"store: cannot connect to PostgreSQL at {self.url}: {reason}") from None
        self._pool = ConnectionPool(
            info, min_size=min_size, max_size=max_size, timeout=timeout, open=False,
            kwargs={"autocommit": True}, check=ConnectionPool.check_connection, name="shipyard-store",
            configure=_configure,
        )
        self._pool.open(wait=True, timeout=timeout)
        self._vectorizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shipyard-search-vectors")
        try:
            self.migrate()
        except BaseException:
            self._pool.close()
            raise
        # One statement per batch, the rows as one array per column, sent in binary (no
        # quoting of large texts)
        self._sql_insert_spans = (
            f"INSERT INTO spans ({', '.join(SPAN_COLUMNS)}) SELECT * FROM {_unnest(_TYPES)} "
            "ON CONFLICT (span_id) DO NOTHING RETURNING span_id"
        )
        self._sql_bulk_upsert = {
            k: self.dialect.q(f"INSERT INTO {u.table} ({', '.join(u.columns)}) SELECT * FROM {_unnest(u.types)} ")
            + u.conflict.replace("{least}", "LEAST").replace("{greatest}", "GREATEST")
            for k, u in UPSERTS.items()
        }

    # ---- connections --------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._pool.connection() as conn, conn.cursor() as cur:
            yield cur

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextmanager
    def _migration(self) -> Iterator[Any]:
        # Held until commit: a second process starting at the same time waits here, then
        # finds the steps recorded and skips them.
        with self._write() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            yield cur

    def _execute_script(self, cur: Any, sql: str) -> None:
        cur.execute(sql)  # several statements at once: allowed without parameters

    # ---- writes -------------------------------------------------------------------
    def _clean(self, rows: list[Any]) -> list[Any]:
        if not any("\x00" in v for r in rows for v in r if v.__class__ is str):
            return rows
        return [tuple(_text(v) for v in r) for r in rows]

    def _insert_spans(self, cur: Any, rows: list[tuple]) -> list[tuple[int, Any]]:
        # The search vectors are made on another thread while the server inserts the spans
        # (psycopg waits for it without the GIL); each new row's handle is its vector.
        vectors = self._vectorizer.submit(_search_vectors, rows)
        try:
            cur.execute(self._sql_insert_spans, _columns(rows, _TYPES))
            inserted = {r[0] for r in cur.fetchall()}
        finally:
            made = vectors.result()
        return [(i, made[i]) for i, r in enumerate(rows) if r[0] in inserted]

    def _upsert(self, cur: Any, key: str, rows: list[Any]) -> None:
        if rows:  # keys are unique within a batch, so one statement can merge them all
            cur.execute(self._sql_bulk_upsert[key], _columns(rows, UPSERTS[key].types))

    def _index_text(self, cur: Any, rows: list[tuple], new: list[tuple[int, Any]]) -> None:
        trace_ids, starts, vectors = [], [], []
        for i, vector in new:
            if vector is not None:
                trace_ids.append(rows[i][1])
                starts.append(float(rows[i][5]))
                vectors.append(vector)
        if vectors:
            cur.execute(
                "INSERT INTO span_search (trace_id, start_time, tsv) "
                "SELECT * FROM unnest(%b::text[], %b::float8[], %b::tsvector[])",
                (trace_ids, starts, vectors),
            )

    def _unindex_text(self, cur: Any, trace_ids: list[str]) -> None:
        cur.execute(self.dialect.q(f"DELETE FROM span_search WHERE trace_id IN {_in(trace_ids)}"), trace_ids)

    # ---- search -------------------------------------------------------------------
    # The planner's estimate for a word it has no statistics on is far too high, so left to
    # itself it walks every trace looking for a rare word; SQLStore._search decides instead.
    def _match_in(self, terms: list[str], since: float) -> tuple[str, list[Any]]:
        # ARRAY(...) runs once, through the GIN index; the traces are then read by key
        return ("t.trace_id = ANY(ARRAY(SELECT x.trace_id FROM span_search x "
                "WHERE x.tsv @@ CAST(? AS tsquery) AND x.start_time >= ?))", [tsquery_literal(terms), since])

    def _match_exists(self, terms: list[str]) -> tuple[str, list[Any]]:
        return ("EXISTS (SELECT 1 FROM span_search x WHERE x.trace_id = t.trace_id "
                "AND x.tsv @@ CAST(? AS tsquery))", [tsquery_literal(terms)])

    def _search(self, cur: Any, where: list[str], args: list[Any], terms: list[str],
                since: float, limit: int) -> list[dict[str, Any]]:
        # and a plan that reads every row of span_search would take seconds: never that
        with cur.connection.transaction():
            cur.execute("SET LOCAL enable_seqscan = off")
            return super()._search(cur, where, args, terms, since, limit)

    def _common(self, cur: Any, terms: list[str], since: float) -> bool:
        cur.execute(
            "SELECT count(*) FROM (SELECT 1 FROM span_search x WHERE x.tsv @@ CAST(%s AS tsquery) "
            "AND x.start_time >= %s LIMIT %s) c",
            (tsquery_literal(terms), since, SPARSE_MATCHES + 1),
        )
        return cur.fetchone()[0] > SPARSE_MATCHES

    # ---- lifecycle ----------------------------------------------------------------
    def ping(self) -> bool:
        try:
            with self._pool.connection(timeout=min(self._timeout, 2.0)) as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    def close(self) -> None:
        self._pool.close()
        self._vectorizer.shutdown(wait=True)
