"""Exact and semantic response caches (docs/operations.md#caching).

``ResponseCache`` (core.py) is what the engine consults; ``keys.py`` says what an entry is
keyed by and what a request asks of the cache; ``embedders.py`` holds the semantic
cache's embedders and term check; backends: ``memory.py`` (default), ``sqlite.py``,
``redis.py``. ``config.py`` is imported by ``shipyard.config``, so this package imports
nothing eagerly.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REQUEST_CACHE_CONTROL", "ResponseCache"]


def __getattr__(name: str) -> Any:
    if name == "ResponseCache":
        from .core import ResponseCache

        return ResponseCache
    if name == "REQUEST_CACHE_CONTROL":
        from .keys import REQUEST_CACHE_CONTROL

        return REQUEST_CACHE_CONTROL
    raise AttributeError(name)
