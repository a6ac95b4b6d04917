"""Where spans live. ``open_store(url)`` picks the backend from the URL scheme."""

from __future__ import annotations

from .base import Store, StoreUnavailable, TraceFilter
from .migrations import register

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str | None) -> Store | None:
    """A store for ``sqlite:///path`` (or ``:memory:``), ``postgresql://user:pass@host:port/db``
    (or ``postgres://``); None for ``none``."""
    if url is None or url == "none":
        return None
    if url == ":memory:" or url.startswith("sqlite://"):
        import sqlite3

        from .sqlite import SQLiteStore

        try:
            return SQLiteStore(url)
        except (sqlite3.Error, OSError, ValueError) as exc:
            from ..errors import ConfigError

            raise ConfigError(f"store: cannot open SQLite database {url}: {exc}") from None
    if url.startswith(POSTGRES_SCHEMES):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith(("clickhouse://", "clickhouses://")):  # ClickHouse: trace volume (store/clickhouse.py)
        from .clickhouse import ClickHouseStore

        return ClickHouseStore(url)
    from ..errors import ConfigError

    scheme = url.split("://", 1)[0] if "://" in url else url
    raise ConfigError(f"store: unsupported URL scheme {scheme!r} (use sqlite:///path, postgresql://..., "
                      "clickhouse://... or none)")


__all__ = ["Store", "StoreUnavailable", "TraceFilter", "open_store", "register"]
