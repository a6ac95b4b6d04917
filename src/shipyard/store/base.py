"""The store interface shared by every backend."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ..errors import ShipyardError
from ..tracing.span import Span

DEFAULT_WINDOW_S = 7 * 24 * 3600
MAX_PAGE = 500


@dataclass(slots=True)
class TraceFilter:
    """A bounded trace query. Without a time range the last 7 days are searched."""

    start: float | None = None
    end: float | None = None
    alias: str | None = None
    model: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    status: str | None = None
    # inclusive bounds on the trace's cost_usd and duration_ms; unknown never satisfies one
    min_cost: float | None = None
    max_cost: float | None = None
    min_latency_ms: float | None = None
    max_latency_ms: float | None = None
    # free text over span inputs and outputs: whole words (letters and digits), any case,
    # every word must occur in one span of the trace
    q: str | None = None
    limit: int = 50
    cursor: str | None = None

    def window(self) -> tuple[float, float]:
        end = self.end if self.end is not None else time.time() + 60
        start = self.start if self.start is not None else end - DEFAULT_WINDOW_S
        return start, end

    def page_size(self) -> int:
        return max(1, min(self.limit, MAX_PAGE))


class StoreUnavailable(ShipyardError):
    """The store's database cannot be reached (said at start-up, without secrets)."""


def encode_cursor(start_time: float, trace_id: str) -> str:
    return base64.urlsafe_b64encode(f"{start_time!r}|{trace_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    from ..errors import InvalidRequest

    try:
        ts, trace_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return float(ts), trace_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("Invalid value for 'cursor': not a cursor from this API", param="cursor") from None


class Store(Protocol):
    def migrate(self) -> list[tuple[str, int]]:
        """Apply registered migrations not yet applied (see store/migrations.py)."""

    def write_spans(self, spans: list[Span], dump: Any) -> None:
        """Insert spans (immutable: a repeated span id is ignored) and update trace rows."""

    def list_traces(self, f: TraceFilter) -> tuple[list[dict[str, Any]], str | None]: ...

    def get_trace(self, trace_id: str) -> dict[str, Any] | None: ...

    def find_span_by_completion(self, completion_id: str) -> dict[str, Any] | None: ...

    def dashboard(self, start: float, end: float, bucket_s: int) -> list[dict[str, Any]]:
        """Per time bucket and model: bucket_start, model, requests, errors, p50_ms, p95_ms,
        cost_usd, input_tokens, output_tokens (llm spans only)."""

    def purge(self, older_than: float) -> int:
        """Retention: delete traces that started before ``older_than`` (with their spans and
        search entries) and rollups of whole buckets before it, in bounded batches; returns
        the number of spans deleted."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def json_text(v: Any) -> str | None:
    """A value for a JSON text column (None stays NULL)."""
    return None if v is None else orjson.dumps(v).decode()


def json_value(v: Any) -> Any:
    """A JSON text column read back (str, bytes or a memoryview from the driver)."""
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray, memoryview)):
        v = bytes(v).decode()
    return orjson.loads(v)
