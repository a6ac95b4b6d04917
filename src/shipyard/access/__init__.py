"""Access control: the admin key, virtual API keys, roles, rate limits and budgets.

- ``keys.py``: key generation, hashing (SHA-256) and the key tables in the store
- ``auth.py``: who is calling (admin key, or a key looked up through an in-process cache)
- ``middleware.py``: the check in front of every route when ``auth`` is on
- ``limits.py``: rpm/tpm and USD budgets per key and team (reserve, then settle)
- ``memory.py``: those limits in this process; ``shipyard/shared/limiter.py``: in Redis
- ``runtime.py``: ``Access``, tying them to the server; ``require_role(request, role)``

See docs/configuration.md (``auth``, ``redis``, ``limits``) and docs/operations.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Access", "build_access", "principal", "require_role"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(name)
