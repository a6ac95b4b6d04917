"""How an eval reaches models: the in-process engine, or a running ``shipyard serve``.

Both callers return a :class:`CallResult` and never raise for a failed call: the error is
data (the case is recorded as an error, the run goes on). Each call is a real gateway
call, so it is recorded as an ``llm`` span in the case's trace: in-process the span is a
child of the case's root span; over HTTP the ``traceparent`` header makes the server
join the same trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import GatewayError
from ..tracing.context import format_traceparent


@dataclass(slots=True)
class CallResult:
    text: str | None = None
    response: dict[str, Any] | None = None
    error: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    model: str | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


def answer_text(resp: dict[str, Any] | None) -> str | None:
    """The first choice's text (tool calls as JSON when there is no text)."""
    if not resp:
        return None
    choices = resp.get("choices") or []
    if not choices:
        return None
    msg = choices[0].get("message") or {}
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if msg.get("tool_calls"):
        import orjson

        return orjson.dumps(msg["tool_calls"]).decode()
    return None


class ModelCaller(Protocol):
    async def chat(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], *,
                   trace_id: str, parent_span_id: str | None, metadata: dict[str, Any],
                   name: str | None = None) -> CallResult: ...

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]: ...

    async def close(self) -> None: ...


class EngineCaller:
    """Calls through an in-process :class:`shipyard.engine.Engine`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def start(self) -> None:
        await self.engine.start()

    async def chat(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], *,
                   trace_id: str, parent_span_id: str | None, metadata: dict[str, Any],
                   name: str | None = None) -> CallResult:
        from ..types import parse_chat_request

        engine = self.engine
        span = engine.new_span("llm", name or ("chat " + model), trace_id=trace_id, parent_id=parent_span_id,
                               metadata=metadata)
        span.attributes.update({k: v for k, v in metadata.items() if k.startswith("eval_")})  # eval tags
        t0 = time.perf_counter()
        try:
            req = parse_chat_request({**params, "model": model, "messages": messages, "metadata": metadata})
            resp = await engine.complete(req, span)
        except GatewayError as exc:
            return CallResult(error=exc.message, trace_id=span.trace_id, span_id=span.span_id,
                              latency_ms=round((time.perf_counter() - t0) * 1000, 3))
        except Exception as exc:  # a bug or a provider crash: the case is an error, the run goes on
            return CallResult(error=f"internal error: {type(exc).__name__}: {exc}", trace_id=span.trace_id,
                              span_id=span.span_id, latency_ms=round((time.perf_counter() - t0) * 1000, 3))
        return CallResult(
            text=answer_text(resp), response=resp, trace_id=span.trace_id, span_id=span.span_id,
            model=span.response_model or span.model, latency_ms=span.duration_ms, cost_usd=span.cost_usd,
            input_tokens=span.input_tokens, output_tokens=span.output_tokens,
        )

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        from ..types import parse_embeddings_request

        engine = self.engine
        model, _, body = parse_embeddings_request({"model": model, "input": texts})
        span = engine.new_span("embedding", "embeddings " + model)
        resp = await engine.embed(model, body, span)
        data = sorted(resp.get("data") or [], key=lambda d: d.get("index", 0))
        return [d["embedding"] for d in data]

    async def close(self) -> None:
        await self.engine.close()


class HttpCaller:
    """Calls a running ``shipyard serve`` (or any OpenAI-compatible server) with the openai SDK."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0,
                 trace_header: str = "x-shipyard-trace-id") -> None:
        import openai

        base_url = base_url.rstrip("/")
        if not base_url.endswith("/v1"):
            base_url += "/v1"
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=0,
                                         timeout=timeout_s)
        self.trace_header = trace_header

    async def start(self) -> None:
        return None

    async def chat(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], *,
                   trace_id: str, parent_span_id: str | None, metadata: dict[str, Any],
                   name: str | None = None) -> CallResult:
        import openai

        headers = {"traceparent": format_traceparent(trace_id, parent_span_id)} if parent_span_id else {}
        t0 = time.perf_counter()
        try:
            raw = await self.client.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_headers=headers,
                extra_body={**params, "metadata": metadata},
            )
        except openai.APIStatusError as exc:
            msg = exc.message
            return CallResult(error=f"HTTP {exc.status_code}: {msg}", trace_id=exc.response.headers.get(
                self.trace_header, trace_id), latency_ms=_ms(t0))
        except openai.APIError as exc:
            return CallResult(error=f"{type(exc).__name__}: {exc}", trace_id=trace_id, latency_ms=_ms(t0))
        latency = _ms(t0)
        resp = raw.parse().model_dump(exclude_unset=True)
        usage = resp.get("usage") or {}
        return CallResult(
            text=answer_text(resp), response=resp, trace_id=raw.headers.get(self.trace_header, trace_id),
            model=resp.get("model"), latency_ms=latency, cost_usd=None,
            input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens"),
        )

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        resp = await self.client.embeddings.create(model=model, input=texts)
        return [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]

    async def close(self) -> None:
        await self.client.close()


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)
