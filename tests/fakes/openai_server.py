"""Fake OpenAI upstream: /v1/chat/completions, /v1/embeddings, /v1/models."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

from .base import (
    BODY_KEY,
    FakeServer,
    Part,
    SseEvent,
    cut_at_stop,
    new_id,
    split_fixed,
    split_pieces,
    sse,
    truncate_words,
)

JSON_REPLY = '{"answer": "fake"}'
MODEL_IDS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")

_ERROR_KINDS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    408: ("server_error", "timeout", "Request timed out."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


@dataclass(frozen=True)
class _Reply:
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str


class FakeOpenAI(FakeServer):
    """Loopback server speaking the OpenAI REST wire format."""

    default_reply_text: ClassVar[str] = "Hello from fake-openai"

    def __init__(self) -> None:
        super().__init__()
        self.embedding_dim: int = 8
        # per-request reply texts, consumed in order before ``reply_text`` applies
        self.reply_queue: list[str] = []
        # reply_fn(request body) -> reply text, or None to fall through to the queue/reply_text
        self.reply_fn: Callable[[dict[str, Any]], str | None] | None = None

    # ------------------------------------------------------------------ hooks

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)

    def error_payload(self, status: int, message: str | None = None) -> dict[str, Any]:
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        err_type, code, default_message = _ERROR_KINDS.get(status, (default_type, None, f"Error {status}."))
        return {"error": {"message": message or default_message, "type": err_type, "param": None, "code": code}}

    def stream_error_event(self, status: int) -> SseEvent:
        return sse(self.error_payload(status))

    def preflight(self, request: web.Request) -> web.Response | None:
        if self.require_key is None:
            return None
        if request.headers.get("Authorization") != f"Bearer {self.require_key}":
            return self.error_response(401)
        return None

    # ------------------------------------------------------------------ chat completions

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY_KEY]
        if not isinstance(body, dict):
            return self.error_response(400, "We could not parse the JSON body of your request.")
        for field in ("model", "messages"):
            if field not in body:
                return self.error_response(400, f"Missing required parameter: '{field}'.")
        reply = self._reply(body)
        if body.get("stream") is True:
            return await self.stream_events(request, self._chunk_events(body, reply))
        return web.json_response(self._completion(body, reply))

    def _reply(self, body: dict[str, Any]) -> _Reply:
        if self.reply_tool_calls:
            calls = [_tool_call(call) for call in self.reply_tool_calls]
            return _Reply(None, calls, "tool_calls")
        fn_text = self.reply_fn(body) if self.reply_fn is not None else None
        if fn_text is not None:
            text = fn_text
        elif self.reply_queue:
            text = self.reply_queue.pop(0)
        else:
            text = self.reply_text
            if not self.reply_text_is_set and _wants_json(body):
                text = JSON_REPLY
        text, _ = cut_at_stop(text, body.get("stop"))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        text, truncated = truncate_words(text, limit)
        return _Reply(text, None, "length" if truncated else "stop")

    def _usage(self) -> dict[str, Any]:
        prompt, completion = self.usage
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def _completion(self, body: dict[str, Any], reply: _Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
            for i in range(_n(body))
        ]
        return {**_envelope(body, "chat.completion"), "choices": choices, "usage": self._usage()}

    def _chunk_events(self, body: dict[str, Any], reply: _Reply) -> Iterator[SseEvent]:
        base = _envelope(body, "chat.completion.chunk")
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if with_usage:
            base["usage"] = None

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice]}

        indices = range(_n(body))
        first_delta = {"role": "assistant", "content": None if reply.tool_calls else ""}
        yield from (sse(chunk(i, first_delta), Part.PREAMBLE) for i in indices)
        for delta in _content_deltas(reply):
            yield from (sse(chunk(i, delta)) for i in indices)
        yield from (sse(chunk(i, {}, reply.finish_reason), Part.TRAILER) for i in indices)
        if with_usage:
            yield sse({**base, "choices": [], "usage": self._usage()}, Part.TRAILER)
        yield sse("[DONE]", Part.TRAILER)

    # ------------------------------------------------------------------ embeddings & models

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY_KEY]
        if not isinstance(body, dict) or "input" not in body or "model" not in body:
            return self.error_response(400, "Missing required parameter: 'input' or 'model'.")
        inputs = _embedding_inputs(body["input"])
        dim = int(body.get("dimensions") or self.embedding_dim)
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(fake_embedding(item, dim), as_base64)}
            for i, item in enumerate(inputs)
        ]
        prompt_tokens = self.usage[0]
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return web.json_response({"object": "list", "data": data, "model": body["model"], "usage": usage})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        data = [{"id": mid, "object": "model", "created": 1700000000, "owned_by": "fake"} for mid in MODEL_IDS]
        return web.json_response({"object": "list", "data": data})


# ---------------------------------------------------------------------- helpers


def fake_embedding(item: Any, dim: int) -> list[float]:
    """Deterministic vector in [-1, 1) derived from a hash of the input."""
    seed = json.dumps(item, sort_keys=True).encode()
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        values.extend(int.from_bytes(digest[i : i + 4], "little") / 2**31 - 1.0 for i in range(0, 32, 4))
        counter += 1
    return [round(v, 6) for v in values[:dim]]


def _encode(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _embedding_inputs(raw: Any) -> list[Any]:
    """str | list[str] | list[int] | list[list[int]] -> list of individual inputs."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        return [raw]
    return list(raw) if isinstance(raw, list) else [raw]


def _n(body: dict[str, Any]) -> int:
    return max(int(body.get("n") or 1), 1)


def _wants_json(body: dict[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def _envelope(body: dict[str, Any], obj: str) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl-fake"),
        "object": obj,
        "created": int(time.time()),
        "model": body.get("model"),
        "system_fingerprint": "fp_fake",
    }


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {"id": new_id("call_"), "type": "function", "function": {"name": call["name"], "arguments": arguments}}


def _content_deltas(reply: _Reply) -> Iterator[dict[str, Any]]:
    """Deltas as OpenAI streams them: text pieces, or per tool call a header then argument fragments."""
    if not reply.tool_calls:
        yield from ({"content": piece} for piece in split_pieces(reply.content or ""))
        return
    for index, call in enumerate(reply.tool_calls):
        function = call["function"]
        header = {"name": function["name"], "arguments": ""}
        yield {"tool_calls": [{"index": index, "id": call["id"], "type": "function", "function": header}]}
        for fragment in split_fixed(function["arguments"]):
            yield {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
