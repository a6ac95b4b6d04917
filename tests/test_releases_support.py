"""Helpers shared by the tests/test_releases_*.py files (no tests of its own)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from conftest import fast_alias  # noqa: F401  (re-exported for the release tests)


def providers(*ups: Any) -> dict[str, Any]:
    """Provider p for the first fake upstream, q for the second, r for the third."""
    return {name: {"type": "openai", "base_url": up.base_url, "api_key": "test"} for name, up in zip("pqr", ups)}


def http(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30)


def create_prompt(h: httpx.Client, name: str, model: str, messages: list[dict[str, Any]], *,
                  labels: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    r = h.post(f"/api/prompts/{name}/versions",
               json={"model": model, "messages": messages, "labels": labels or [], **extra})
    assert r.status_code == 201, r.text
    return r.json()


def trace_of(server: Any, trace_id: str) -> dict[str, Any]:
    server.flush()
    with http(server) as h:
        r = h.get(f"/api/traces/{trace_id}")
        assert r.status_code == 200, r.text
        return r.json()


def spans_by_kind(trace: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in trace["spans"] if s["kind"] == kind]


def wait_for(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def call(client: Any, **kw: Any) -> tuple[Any, str]:
    """A chat completion through the openai SDK: (the parsed response, its trace id)."""
    raw = client.chat.completions.with_raw_response.create(**kw)
    return raw.parse(), raw.headers["x-shipyard-trace-id"]
