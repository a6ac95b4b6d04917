"""Route groups mounted by the server besides the OpenAI API, one module each.

Each entry is "module:function"; the function takes the Engine and returns a list of
Starlette routes (and may register span listeners or lifespan hooks on the engine).
"""

from __future__ import annotations

import importlib
from typing import Any

FEATURES: list[str] = [
    "shipyard.server.api:routes",  # GET /api/traces, /api/traces/{id}, /api/dashboard (JSON read API)
    "shipyard.server.ui:routes",  # /ui web UI (traces, trace detail, dashboard)
    "shipyard.server.otlp_routes:otlp_routes",  # POST /v1/traces (OTLP/HTTP ingestion)
    "shipyard.server.metrics:metrics_routes",  # GET /metrics (Prometheus)
    "shipyard.server.admin_prompts:routes",  # /api/prompts (admin), /api/shadow, /api/experiments, /ui/prompts
    "shipyard.drift.ui:routes",  # /ui/drift, /api/drift, /api/drift/latest; the scheduled drift check
    # feedback (docs/feedback.md): POST /api/feedback, /api/outcomes; GET /api/feedback[/stats], /api/traces/{id}/feedback
    "shipyard.server.feedback_routes:routes",
    "shipyard.server.review_ui:routes",  # /ui/review (the review queue), /api/review/* (queue, labels, datasets)
]


def feature_routes(engine: Any) -> list[Any]:
    routes: list[Any] = []
    for target in FEATURES:
        module, _, fn = target.partition(":")
        routes += getattr(importlib.import_module(module), fn)(engine)
    return routes
