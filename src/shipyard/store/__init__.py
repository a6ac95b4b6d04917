"""Where spans live. ``open_store(url)`` picks the backend from the URL scheme."""

from __future__ import annotations

from .base import Store, TraceFilter


def open_store(url: str | None) -> Store | None:
    """A store for ``sqlite:///path`` (or ``:memory:``); None for ``none``."""
    if url is None or url == "none":
        return None
    if url == ":memory:" or url.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url)
    from ..errors import ConfigError

    raise ConfigError(f"store: unsupported URL {url!r}")


__all__ = ["Store", "TraceFilter", "open_store"]
