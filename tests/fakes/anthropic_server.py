"""Fake Anthropic upstream: the Messages API (/v1/messages) plus count_tokens and models."""

from __future__ import annotations

import json
from collections.abc import Iterator
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

FORCED_TOOL_INPUT: dict[str, Any] = {"answer": "fake"}
MODEL_IDS = ("claude-3-5-haiku-latest", "claude-sonnet-4-5")

_ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass(frozen=True)
class _Reply:
    blocks: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None


class FakeAnthropic(FakeServer):
    """Loopback server speaking the Anthropic Messages wire format."""

    default_reply_text: ClassVar[str] = "Hello from fake-anthropic"

    # ------------------------------------------------------------------ hooks

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_get("/v1/models", self._models)

    def error_payload(self, status: int, message: str | None = None) -> dict[str, Any]:
        default_type = "api_error" if status >= 500 else "invalid_request_error"
        err_type, default_message = _ERROR_TYPES.get(status, (default_type, f"Error {status}."))
        return {
            "type": "error",
            "error": {"type": err_type, "message": message or default_message},
            "request_id": new_id("req_"),
        }

    def stream_error_event(self, status: int) -> SseEvent:
        return sse(self.error_payload(status), Part.TRAILER, event="error")

    def preflight(self, request: web.Request) -> web.Response | None:
        if self.require_key is not None and request.headers.get("x-api-key") != self.require_key:
            return self.error_response(401)
        if "anthropic-version" not in request.headers:
            return self.error_response(400, "anthropic-version: header is required")
        return None

    # ------------------------------------------------------------------ messages

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY_KEY]
        problem = validate_messages_request(body)
        if problem is not None:
            return self.error_response(400, problem)
        reply = self._reply(body)
        if body.get("stream") is True:
            return await self.stream_events(request, self._stream(body, reply))
        return web.json_response(self._message(body, reply, self.usage[1]))

    def _reply(self, body: dict[str, Any]) -> _Reply:
        if self.reply_tool_calls:
            blocks = [_tool_use(call["name"], call.get("arguments", {})) for call in self.reply_tool_calls]
            return _Reply(blocks, "tool_use", None)
        forced = _forced_tool(body)
        if forced is not None:
            return _Reply([_tool_use(forced, FORCED_TOOL_INPUT)], "tool_use", None)
        text, matched = cut_at_stop(self.reply_text, body.get("stop_sequences"))
        text, truncated = truncate_words(text, body["max_tokens"])
        stop_reason = "max_tokens" if truncated else "stop_sequence" if matched else "end_turn"
        return _Reply([{"type": "text", "text": text}], stop_reason, None if truncated else matched)

    def _message(self, body: dict[str, Any], reply: _Reply | None, output_tokens: int) -> dict[str, Any]:
        """A full message, or the empty message_start form when ``reply`` is None."""
        return {
            "id": new_id("msg_fake"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": reply.blocks if reply else [],
            "stop_reason": reply.stop_reason if reply else None,
            "stop_sequence": reply.stop_sequence if reply else None,
            "usage": {
                "input_tokens": self.usage[0],
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def _stream(self, body: dict[str, Any], reply: _Reply) -> Iterator[SseEvent]:
        yield _event({"type": "message_start", "message": self._message(body, None, 1)}, Part.PREAMBLE)
        for index, block in enumerate(reply.blocks):
            start_part = Part.PREAMBLE if index == 0 else Part.TRAILER
            yield _event({"type": "content_block_start", "index": index, "content_block": _empty(block)}, start_part)
            if index == 0:
                yield _event({"type": "ping"}, Part.PREAMBLE)
            for delta in _block_deltas(block):
                yield _event({"type": "content_block_delta", "index": index, "delta": delta})
            yield _event({"type": "content_block_stop", "index": index}, Part.TRAILER)
        stop = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
        yield _event({"type": "message_delta", "delta": stop, "usage": {"output_tokens": self.usage[1]}}, Part.TRAILER)
        yield _event({"type": "message_stop"}, Part.TRAILER)

    # ------------------------------------------------------------------ other endpoints

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY_KEY]
        if not isinstance(body, dict) or "messages" not in body or "model" not in body:
            return self.error_response(400, "model and messages: field required")
        return web.json_response({"input_tokens": self.usage[0]})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        data = [
            {"type": "model", "id": mid, "display_name": mid, "created_at": "2025-01-01T00:00:00Z"}
            for mid in MODEL_IDS
        ]
        page = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        return web.json_response(page)


# ---------------------------------------------------------------------- validation


def validate_messages_request(body: Any) -> str | None:
    """Return an invalid_request_error message, or None if the request is acceptable."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object."
    if "model" not in body:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required (positive integer)"
    return _validate_messages(body.get("messages")) or _validate_system(body.get("system"))


def _validate_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages: Field required (non-empty list)"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), (str, list)):
            return f"messages.{i}.content: Input should be a string or a list of content blocks"
    return None


def _validate_system(system: Any) -> str | None:
    if system is None or isinstance(system, str):
        return None
    if isinstance(system, list) and all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str) for b in system
    ):
        return None
    return "system: Input should be a string or a list of text blocks"


# ---------------------------------------------------------------------- helpers


def _event(data: dict[str, Any], part: Part = Part.CONTENT) -> SseEvent:
    return sse(data, part, event=data["type"])


def _tool_use(name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    tool_input = json.loads(arguments) if isinstance(arguments, str) else arguments
    return {"type": "tool_use", "id": new_id("toolu_"), "name": name, "input": tool_input}


def _forced_tool(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "tool":
        return None
    names = {tool.get("name") for tool in body.get("tools") or [] if isinstance(tool, dict)}
    return choice.get("name") if choice.get("name") in names else None


def _empty(block: dict[str, Any]) -> dict[str, Any]:
    """The content_block_start form of a block: text empty, tool input {}."""
    return {**block, "text": ""} if block["type"] == "text" else {**block, "input": {}}


def _block_deltas(block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if block["type"] == "text":
        yield from ({"type": "text_delta", "text": piece} for piece in split_pieces(block["text"]))
    else:
        for fragment in split_fixed(json.dumps(block["input"])):
            yield {"type": "input_json_delta", "partial_json": fragment}
