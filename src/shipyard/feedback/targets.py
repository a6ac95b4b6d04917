"""What feedback is about: a trace, and in it the llm call ("target") it judges.

A trace may hold several llm calls (an agent, a re-ask, a guard's judge). Feedback addressed
by completion id is about that call; addressed by trace id it is about the trace's *main*
call: the last llm call that is not a guard's judge (in a chain, the final answer).

The target carries the dimensions the analytics group by:

- ``alias``: the alias that answered;
- ``model``: the exact model version reported (else the configured one);
- ``prompt_version``: ``name@version`` of the registry prompt that ran (span attribute
  ``prompt``), when there was one;
- ``route``: what the client asked for (``chat <model>`` span name: an alias, a prompt
  reference or an intent router), which differs from the alias when routing decided.

Spans reach the store a moment after the response (the recorder writes in batches), so
the server also remembers the calls it finished recently (:class:`RecentTargets`, fed by
``engine.span_listeners``): feedback sent right after a response finds its trace.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

EVAL_MARKS = ("eval_run", "drift_probe")


def _get(span: Any, key: str) -> Any:
    return span.get(key) if isinstance(span, dict) else getattr(span, key, None)


def prompt_version(attributes: Any) -> str | None:
    prompt = attributes.get("prompt") if isinstance(attributes, dict) else None
    if isinstance(prompt, dict):
        name = prompt.get("name") or prompt.get("id")
        if name is None:
            return None
        return f"{name}@{prompt['version']}" if prompt.get("version") is not None else str(name)
    if isinstance(prompt, str) and prompt:
        return prompt
    return None


def route_of(span: Any) -> str | None:
    name = _get(span, "name") or ""
    if isinstance(name, str) and name.startswith("chat ") and len(name) > 5:
        return name[5:]
    return _get(span, "alias")


def is_judge(span: Any) -> bool:
    return str(_get(span, "name") or "").startswith("judge ")


def is_eval_traffic(span: Any) -> bool:
    attrs = _get(span, "attributes") or {}
    if not isinstance(attrs, dict):
        return False
    meta = attrs.get("metadata")
    return any(m in attrs for m in EVAL_MARKS) or (isinstance(meta, dict) and any(m in meta for m in EVAL_MARKS))


def guard_failed(span: Any) -> bool:
    """A guard on this call decided 'fail' (blocked, redacted, flagged, ...)."""
    attrs = _get(span, "attributes") or {}
    decisions = attrs.get("guard_decisions") if isinstance(attrs, dict) else None
    if isinstance(decisions, dict):
        decisions = [decisions]
    for d in decisions or []:
        if not isinstance(d, dict):
            continue
        if d.get("passed") is False:
            return True
        if d.get("passed") is True:
            continue
        outcome = str(d.get("decision") or d.get("outcome") or d.get("action") or "").lower()
        if outcome in ("fail", "failed", "block", "blocked", "redact", "redacted", "mask", "flag", "flagged",
                       "deny", "denied", "reject", "rejected", "reask", "re-ask", "fallback"):
            return True
    return False


@dataclass(slots=True)
class Target:
    trace_id: str
    span_id: str | None = None
    completion_id: str | None = None
    alias: str | None = None
    model: str | None = None
    prompt_version: str | None = None
    route: str | None = None
    trace_time: float | None = None
    session_id: str | None = None
    user_id: str | None = None

    @classmethod
    def of_span(cls, span: Any, trace_time: float | None = None) -> "Target":
        return cls(
            trace_id=_get(span, "trace_id"), span_id=_get(span, "span_id"),
            completion_id=_get(span, "completion_id"), alias=_get(span, "alias"),
            model=_get(span, "response_model") or _get(span, "model"),
            prompt_version=prompt_version(_get(span, "attributes")), route=route_of(span),
            trace_time=trace_time if trace_time is not None else _get(span, "start_time"),
            session_id=_get(span, "session_id"), user_id=_get(span, "user_id"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def llm_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s.get("kind") == "llm" and not is_judge(s)]


def main_span(trace: dict[str, Any]) -> dict[str, Any] | None:
    """The trace's main llm call: the last one (by start) that is not a guard's judge."""
    calls = llm_spans(trace.get("spans") or [])
    if not calls:
        return None
    return max(calls, key=lambda s: (s.get("start_time") or 0.0, s.get("span_id") or ""))


def target_in_trace(trace: dict[str, Any], span_id: str | None = None,
                    completion_id: str | None = None) -> Target | None:
    """The target in a stored trace: the span named by id / completion id, else the main
    call; None when ``span_id`` / ``completion_id`` is not in the trace."""
    spans = trace.get("spans") or []
    span = None
    if completion_id is not None:
        span = next((s for s in spans if s.get("completion_id") == completion_id), None)
        if span is None:
            return None
    elif span_id is not None:
        span = next((s for s in spans if s.get("span_id") == span_id), None)
        if span is None:
            return None
    else:
        span = main_span(trace)
    t0 = trace.get("start_time")
    if span is None:  # a trace without llm calls (an app's own spans): feedback on the trace
        return Target(trace_id=trace["trace_id"], trace_time=t0, session_id=trace.get("session_id"),
                      user_id=trace.get("user_id"), alias=trace.get("alias"), model=trace.get("model"))
    return Target.of_span(span, t0)


class RecentTargets:
    """The llm calls this process finished most recently, by trace id and completion id
    (bounded; oldest forgotten first). ``observe`` is a span listener: cheap, no I/O."""

    def __init__(self, maxsize: int = 20_000) -> None:
        self.maxsize = maxsize
        self._by_trace: OrderedDict[str, Target] = OrderedDict()
        self._by_completion: OrderedDict[str, Target] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, span: Any) -> None:
        if getattr(span, "kind", None) != "llm" or is_judge(span):
            return
        t = Target.of_span(span)
        with self._lock:
            prev = self._by_trace.get(t.trace_id)
            # the main call is the last to start (a chain's final answer)
            if prev is None or (prev.trace_time or 0.0) <= (t.trace_time or 0.0):
                if prev is not None and prev.trace_time is not None and t.trace_time is not None:
                    t.trace_time = min(prev.trace_time, t.trace_time)
                self._by_trace[t.trace_id] = t
                self._by_trace.move_to_end(t.trace_id)
            if t.completion_id:
                self._by_completion[t.completion_id] = t
            while len(self._by_trace) > self.maxsize:
                self._by_trace.popitem(last=False)
            while len(self._by_completion) > self.maxsize:
                self._by_completion.popitem(last=False)

    def by_trace(self, trace_id: str) -> Target | None:
        with self._lock:
            return self._by_trace.get(trace_id)

    def by_completion(self, completion_id: str) -> Target | None:
        with self._lock:
            return self._by_completion.get(completion_id)
