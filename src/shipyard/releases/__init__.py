"""Releases: the prompt registry, model pinning, shadow traffic, A/B experiments, intent
routing, cascades and gated promotion (docs/releases.md).

The engine owns one :class:`~shipyard.releases.core.Releases`; its ``resolve()`` runs at the
start of every chat call and may rewrite the request (a prompt rendered, an experiment's
variant applied, an intent routed) and pick the router; ``after_success()`` hands a sampled
call to the shadow pool. Nothing here is imported by ``shipyard.config`` except
``releases.config``, so this module stays import-light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Releases"]


def __getattr__(name: str) -> Any:
    if name == "Releases":
        from .core import Releases

        return Releases
    raise AttributeError(name)
