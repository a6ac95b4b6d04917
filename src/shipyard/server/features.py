"""Route groups mounted by the server besides the OpenAI API, one module each.

Each entry is "module:function"; the function takes the Engine and returns a list of
Starlette routes (and may register span listeners or lifespan hooks on the engine).
"""

from __future__ import annotations

import importlib
from typing import Any

FEATURES: list[str] = [
]


def feature_routes(engine: Any) -> list[Any]:
    routes: list[Any] = []
    for target in FEATURES:
        module, _, fn = target.partition(":")
        routes += getattr(importlib.import_module(module), fn)(engine)
    return routes
