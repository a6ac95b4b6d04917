"""Canonical request and response types: the OpenAI chat shape, validated once.

The gateway's internal currency is the OpenAI Chat Completions body as a plain ``dict``:
providers receive it (with ``model`` replaced by the target's model) and return OpenAI
response dicts and stream-chunk dicts. Validation happens once, here, by hand rather
than through a model class, because it runs on every request and must name the exact
field that is wrong.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})

# Fields that shape the request itself and are not forwarded to providers as-is.
GATEWAY_ONLY_FIELDS = frozenset({"metadata"})


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {message}", param=param, code="invalid_value")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(slots=True)
class ChatRequest:
    """A validated chat request. ``body`` is the OpenAI-shaped dict sent to providers."""

    body: dict[str, Any]
    model: str
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    user: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body["messages"]

    def for_target(self, model: str) -> dict[str, Any]:
        """The body to send to one target: same request, the target's model name."""
        body = {k: v for k, v in self.body.items() if k not in GATEWAY_ONLY_FIELDS}
        body["model"] = model
        return body


def _check_message(i: int, m: Any) -> None:
    p = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _bad(p, "must be an object with 'role' and 'content'")
    role = m.get("role")
    if role not in ROLES:
        raise _bad(f"{p}.role", f"must be one of {sorted(ROLES)}, got {role!r}")
    content = m.get("content")
    if content is None:
        if role == "assistant" and (m.get("tool_calls") or m.get("function_call")):
            return
        if role == "assistant":
            return
        raise _bad(f"{p}.content", "is required")
    if isinstance(content, str):
        pass
    elif isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _bad(f"{p}.content[{j}]", "must be an object with a 'type'")
    else:
        raise _bad(f"{p}.content", "must be a string or an array of content parts")
    if role == "tool" and not isinstance(m.get("tool_call_id"), str):
        raise _bad(f"{p}.tool_call_id", "is required for role 'tool'")


def _check_response_format(rf: Any) -> None:
    if not isinstance(rf, dict) or rf.get("type") not in RESPONSE_FORMATS:
        raise _bad("response_format", f"'type' must be one of {sorted(RESPONSE_FORMATS)}")
    if rf["type"] == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("name"), str):
            raise _bad("response_format.json_schema", "must be an object with a 'name'")
        schema = js.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise _bad("response_format.json_schema.schema", "must be a JSON Schema object")
        if schema is not None:
            check_json_schema(schema, "response_format.json_schema.schema")


def check_json_schema(schema: dict[str, Any], param: str) -> None:
    """Reject a JSON Schema that is not itself valid, naming the reason."""
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - jsonschema is a dependency of openai's deps
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _bad(param, f"not a valid JSON Schema: {exc.message}") from None


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _bad("tools", "must be an array")
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            raise _bad(f"tools[{i}]", "must be an object with type 'function'")
        fn = t.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"tools[{i}].function.name", "is required")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _bad(f"tools[{i}].function.parameters", "must be a JSON Schema object")


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate an OpenAI chat-completions body; raise InvalidRequest naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "is required and must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "is required and must be a non-empty array")
    for i, m in enumerate(messages):
        _check_message(i, m)

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream", "must be a boolean")
    include_usage = False
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise _bad("stream_options", "must be an object")
        include_usage = bool(so.get("include_usage", False))

    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        v = body.get(key)
        if v is not None and not _is_num(v):
            raise _bad(key, "must be a number")
    t = body.get("temperature")
    if t is not None and not 0 <= t <= 2:
        raise _bad("temperature", "must be between 0 and 2")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not _is_int(n) or n < 1 or n > 128:
        raise _bad("n", "must be an integer between 1 and 128")
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (not _is_int(v) or v < 1):
            raise _bad(key, "must be a positive integer")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _bad("seed", "must be an integer")
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            pass
        elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
            pass
        else:
            raise _bad("stop", "must be a string or an array of up to 4 strings")
    rf = body.get("response_format")
    if rf is not None:
        _check_response_format(rf)
    tools = body.get("tools")
    if tools is not None:
        _check_tools(tools)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", "must be a string")
    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise _bad("metadata", "must be an object")
    return ChatRequest(
        body=body,
        model=model,
        stream=stream,
        include_usage=include_usage,
        n=n,
        user=user,
        metadata=metadata,
    )


def parse_embeddings_request(body: Any) -> tuple[str, list[str] | list[list[int]], dict[str, Any]]:
    """Validate an OpenAI embeddings body; returns (model, inputs, body)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "is required and must be a non-empty string")
    inp = body.get("input")
    if isinstance(inp, str):
        inputs: Any = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(x, str) for x in inp):
        inputs = inp
    elif isinstance(inp, list) and inp and all(
        isinstance(x, list) and all(_is_int(t) for t in x) for x in inp
    ):
        inputs = inp
    elif isinstance(inp, list) and inp and all(_is_int(t) for t in inp):
        inputs = [inp]
    else:
        raise _bad("input", "must be a string, an array of strings, or token arrays")
    if len(inputs) > 2048:
        raise _bad("input", "at most 2048 inputs per request")
    enc = body.get("encoding_format")
    if enc is not None and enc not in ("float", "base64"):
        raise _bad("encoding_format", "must be 'float' or 'base64'")
    return model, inputs, body


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def now() -> int:
    return int(time.time())


def usage_of(resp: dict[str, Any] | None) -> tuple[int | None, int | None, int | None]:
    """(input, output, cached input) tokens from an OpenAI usage block."""
    if not resp:
        return None, None, None
    u = resp.get("usage")
    if not isinstance(u, dict):
        return None, None, None
    cached = None
    details = u.get("prompt_tokens_details")
    if isinstance(details, dict):
        cached = details.get("cached_tokens")
    return u.get("prompt_tokens"), u.get("completion_tokens"), cached
