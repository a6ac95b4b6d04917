"""The span: one timed step of a trace. An llm span also carries the call's lineage."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

KINDS = frozenset({"llm", "retrieval", "embedding", "tool", "guard", "router", "chain", "evaluator"})


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


@dataclass(slots=True)
class Span:
    trace_id: str
    span_id: str
    name: str
    kind: str = "llm"
    parent_id: str | None = None
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    status: str = "ok"  # ok | error
    error: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    input: Any = None
    output: Any = None
    # lineage of an llm call (None for other kinds)
    alias: str | None = None
    provider: str | None = None
    model: str | None = None  # the target's configured model
    response_model: str | None = None  # the exact version the provider reported
    user_id: str | None = None
    session_id: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cost_usd: float | None = None
    ttft_ms: float | None = None
    completion_id: str | None = None

    @property
    def duration_ms(self) -> float | None:
        if self.end_time is None:
            return None
        return round((self.end_time - self.start_time) * 1000.0, 3)
