"""Anthropic's Messages API (``POST {base_url}/v1/messages``), translated both ways.

The gateway speaks OpenAI Chat Completions; this provider turns such a body into an
Anthropic Messages request and the answer (or its event stream) back into OpenAI
``chat.completion`` / ``chat.completion.chunk`` dicts.

Request translation (OpenAI -> Anthropic):

* ``system`` and ``developer`` messages, wherever they appear, are joined (blank line
  between) into the top-level ``system`` string.
* ``user``/``assistant`` messages keep their role; consecutive messages of the same role
  are merged into one turn, as Anthropic requires alternation. ``tool`` messages become
  ``tool_result`` blocks in a user turn (merged with a following user message, results
  first). Legacy ``function_call``/``function`` history messages are mapped the same way.
* Content parts: ``text``; ``image_url`` (``data:`` URLs -> base64 source, http(s) ->
  url source; ``detail`` is ignored); ``file`` with base64 ``file_data`` -> ``document``.
  Other parts (audio, ``file_id``) are not supported: the attempt fails with
  ``failover=True`` so another target can take it.
* Assistant ``tool_calls`` -> ``tool_use`` blocks (``arguments`` must be a JSON object;
  invalid JSON is the client's mistake: status 400, not retryable, no failover).
* ``max_completion_tokens``/``max_tokens`` -> ``max_tokens`` (Anthropic requires it:
  ``default_max_tokens`` when absent). ``temperature`` is clamped to Anthropic's 0..1
  (OpenAI allows 0..2; values above 1 become 1.0). ``top_p`` is forwarded unless it is
  ``>= 1`` (a no-op that newer Claude models reject alongside ``temperature``).
  ``stop`` -> ``stop_sequences``; ``user`` -> ``metadata.user_id``.
* ``tools`` -> ``{name, description, input_schema}``; ``tool_choice`` auto/required/none/
  named function -> ``auto``/``any``/``none``/``tool``; ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use``.
* ``response_format`` ``json_schema`` -> an extra tool named after the schema (sanitised)
  that the model is forced to call (``tool_choice: any`` instead when the request also
  has tools of its own, so those stay callable); its input comes back as the message
  ``content`` (a JSON string, ``finish_reason`` "stop"), streamed as content deltas.
  Non-object schemas are wrapped as ``{"value": schema}`` and unwrapped again.
  ``json_object`` adds a system instruction to answer with one JSON object and strips a
  Markdown code fence from the reply (also while streaming).
* ``n > 1`` (non-streaming) runs n calls concurrently and merges their choices; usage is
  the sum over the calls (each call is billed for its prompt). Streaming with ``n > 1``
  is rejected (status 400, not retryable, no failover).
* Dropped silently, as Anthropic has no equivalent: ``seed``, ``presence_penalty``,
  ``frequency_penalty``, ``logit_bias``, ``logprobs``/``top_logprobs`` (choices carry
  ``logprobs: null``), ``service_tier``, ``store``, ``reasoning_effort``, ``modalities``,
  ``prediction``, legacy ``functions``/``function_call`` request fields.

Response translation: text blocks are joined into ``content`` (``None`` when there is no
text), ``tool_use`` blocks become ``tool_calls``, thinking blocks are dropped; stop
reasons map end_turn/stop_sequence/pause_turn -> "stop", max_tokens -> "length",
tool_use -> "tool_calls", refusal -> "content_filter". ``prompt_tokens`` counts input,
cache-read and cache-creation tokens; ``prompt_tokens_details.cached_tokens`` the reads.

Streaming: the ``{"role": "assistant", "content": ""}`` chunk is sent together with the
first real content (text, tool call or finish) rather than on ``message_start``, so an
``error`` event before any content (Anthropic's usual "overloaded" right after
``message_start``) still raises from the first ``__anext__`` and the router can fail over
transparently. A later ``error`` event raises ``UpstreamError``
(retryable, kind "stream_error"); a stream ending without ``message_stop`` raises kind
"truncated".
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable

import orjson
from pydantic import Field, SecretStr

from ..errors import UpstreamError
from ..types import new_completion_id, now
from .base import CallTimeouts, ProviderOptions
from .http import HttpClient, HttpProvider, loads_event, malformed, read_sse


class AnthropicOptions(ProviderOptions):
    base_url: str = "https://api.anthropic.com"
    api_key: SecretStr | None = None
    anthropic_version: str = "2023-06-01"
    headers: dict[str, str] = Field(default_factory=dict)
    max_connections: int = Field(1000, ge=1)
    default_max_tokens: int = Field(4096, ge=1, description="max_tokens when the request sets none")


FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

JSON_OBJECT_INSTRUCTION = (
    "Answer with a single JSON object only: no prose before or after it and no Markdown code fences."
)
JSON_TOOL_DESCRIPTION = "Give your final answer by calling this tool; its input is the answer."

_TOOL_NAME_BAD = re.compile(r"[^a-zA-Z0-9_-]")
_DATA_URL = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),(.*)$", re.S)


def _client_error(name: str, message: str) -> UpstreamError:
    """The request itself is wrong: another target would reject it too."""
    return UpstreamError(
        f"{name}: {message}", status=400, retryable=False, failover=False, kind="invalid_request"
    )


def _unsupported(name: str, message: str) -> UpstreamError:
    """Anthropic cannot do this, but another target may."""
    return UpstreamError(
        f"{name}: {message} is not supported by anthropic",
        status=400,
        retryable=False,
        failover=True,
        kind="unsupported",
    )


def _error_message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace").strip() or "no body"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            kind = err.get("type")
            msg = str(err["message"])[:300]
            return f"{kind}: {msg}" if kind else msg
        if isinstance(err, str):
            return err[:300]
        if data.get("message"):
            return str(data["message"])[:300]
    return "unrecognised error body"


def _sanitise_tool_name(name: str) -> str:
    return _TOOL_NAME_BAD.sub("_", name)[:64] or "json_response"


# --------------------------------------------------------------------------- request


@dataclass(slots=True)
class _Plan:
    """What the response translation must undo."""

    json_tool: str | None = None  # the forced response_format tool
    json_wrapped: bool = False  # its schema was wrapped as {"value": schema}
    json_object: bool = False  # strip a Markdown fence from the reply


def _text_of(name: str, content: Any, where: str) -> str:
    """Plain text of a system/developer message (string or text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        if part.get("type") != "text":
            raise _unsupported(name, f"{where}.content[{j}] of type {part.get('type')!r} in a system message")
        parts.append(str(part.get("text", "")))
    return "\n".join(parts)


def _data_source(name: str, url: str, where: str) -> dict[str, Any]:
    m = _DATA_URL.match(url)
    if not m or ";base64" not in m.group(2):
        raise _client_error(name, f"{where}: a data: URL must be base64-encoded")
    return {"type": "base64", "media_type": m.group(1) or "application/octet-stream", "data": m.group(3)}


def _part_to_block(name: str, part: dict[str, Any], where: str) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise _client_error(name, f"{where}.text must be a string")
        return {"type": "text", "text": text} if text else None
    if kind == "refusal":  # assistant history
        text = part.get("refusal") or ""
        return {"type": "text", "text": text} if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url:
            raise _client_error(name, f"{where}.image_url.url is required")
        if url.startswith("data:"):
            return {"type": "image", "source": _data_source(name, url, f"{where}.image_url.url")}
        if url.startswith(("http://", "https://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
        raise _client_error(name, f"{where}.image_url.url must be an http(s) or data: URL")
    if kind == "file":
        f = part.get("file")
        data = f.get("file_data") if isinstance(f, dict) else None
        if isinstance(data, str) and data.startswith("data:"):
            return {"type": "document", "source": _data_source(name, data, f"{where}.file.file_data")}
        raise _unsupported(name, f"{where}: a file part without base64 file_data")
    raise _unsupported(name, f"{where}: content part type {kind!r}")


def _blocks(name: str, content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out = []
    for j, part in enumerate(content):
        block = _part_to_block(name, part, f"{where}.content[{j}]")
        if block is not None:
            out.append(block)
    return out


def _tool_input(name: str, arguments: Any, where: str) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            raise _client_error(name, f"{where} is not valid JSON") from None
        if isinstance(value, dict):
            return value
    raise _client_error(name, f"{where} must be a JSON object")


def _tool_result(name: str, tool_use_id: str, content: Any, where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        blocks = _blocks(name, content, where)
        if blocks:
            block["content"] = blocks
    return block


def _messages(name: str, messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Anthropic turns) for OpenAI messages."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    last_function_id: str | None = None

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": list(blocks)})

    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            text = _text_of(name, content, where)
            if text:
                system.append(text)
        elif role == "user":
            add("user", _blocks(name, content, where))
        elif role == "assistant":
            blocks = _blocks(name, content, where)
            for j, call in enumerate(m.get("tool_calls") or []):
                cw = f"{where}.tool_calls[{j}]"
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise _client_error(name, f"{cw}.function.name is required")
                call_id = call.get("id")
                if not isinstance(call_id, str) or not call_id:
                    raise _client_error(name, f"{cw}.id is required")
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call_id,
                        "name": fn["name"],
                        "input": _tool_input(name, fn.get("arguments"), f"{cw}.function.arguments"),
                    }
                )
            fc = m.get("function_call")
            if isinstance(fc, dict) and isinstance(fc.get("name"), str):
                last_function_id = f"call_fn_{i}"
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": last_function_id,
                        "name": fc["name"],
                        "input": _tool_input(name, fc.get("arguments"), f"{where}.function_call.arguments"),
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            add("user", [_tool_result(name, m["tool_call_id"], content, where)])
        elif role == "function":
            if last_function_id is None:
                raise _client_error(name, f"{where}: a 'function' message must follow a function_call")
            add("user", [_tool_result(name, last_function_id, content, where)])
            last_function_id = None
        else:  # pragma: no cover - the gateway validates roles
            raise _client_error(name, f"{where}.role {role!r} is not supported")

    for turn in turns:
        blocks = turn["content"]
        if turn["role"] == "user":
            # Anthropic wants tool results before any other content of the turn.
            blocks.sort(key=lambda b: b.get("type") != "tool_result")
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]
    return system, turns


def _tool_choice(name: str, choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            return {"type": "tool", "name": fn["name"]}
        raise _client_error(name, "tool_choice.function.name is required")
    raise _unsupported(name, f"tool_choice {choice!r}")


def to_anthropic(name: str, body: dict[str, Any], options: AnthropicOptions) -> tuple[dict[str, Any], _Plan]:
    """The Anthropic Messages request for an OpenAI chat body, and what to undo on the way back."""
    plan = _Plan()
    system, turns = _messages(name, body.get("messages") or [])
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or options.default_max_tokens
    out: dict[str, Any] = {"model": body.get("model"), "max_tokens": max_tokens, "messages": turns}

    temperature = body.get("temperature")
    if temperature is not None:
        out["temperature"] = min(float(temperature), 1.0)
    top_p = body.get("top_p")
    if top_p is not None and top_p < 1:
        out["top_p"] = top_p
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop:
        out["stop_sequences"] = list(stop)
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}

    tools: list[dict[str, Any]] = []
    for t in body.get("tools") or []:
        fn = t.get("function") or {}
        tool: dict[str, Any] = {"name": fn.get("name")}
        if fn.get("description"):
            tool["description"] = fn["description"]
        tool["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
        tools.append(tool)
    choice = _tool_choice(name, body.get("tool_choice"))

    rf = body.get("response_format")
    rf_type = rf.get("type") if isinstance(rf, dict) else None
    if rf_type == "json_schema":
        js = rf.get("json_schema") or {}
        schema = js.get("schema") or {"type": "object"}
        if schema.get("type") != "object":
            schema = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
            plan.json_wrapped = True
        tool_name = _sanitise_tool_name(str(js.get("name") or ""))
        taken = {t["name"] for t in tools}
        if tool_name in taken:
            tool_name = _sanitise_tool_name(tool_name[:55] + "_response")
        plan.json_tool = tool_name
        has_own_tools = bool(tools)
        tools.append(
            {
                "name": tool_name,
                "description": js.get("description") or JSON_TOOL_DESCRIPTION,
                "input_schema": schema,
            }
        )
        if not has_own_tools or (choice is not None and choice["type"] == "none"):
            choice = {"type": "tool", "name": tool_name}
        elif choice is None or choice["type"] == "auto":
            choice = {"type": "any"}  # answer through the JSON tool or call one of the others
    elif rf_type == "json_object":
        system.append(JSON_OBJECT_INSTRUCTION)
        plan.json_object = True

    if tools:
        out["tools"] = tools
        if body.get("parallel_tool_calls") is False:
            if choice is None:
                choice = {"type": "auto"}
            if choice["type"] != "none":
                choice = {**choice, "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    if system:
        out["system"] = "\n\n".join(system)
    return out, plan


# --------------------------------------------------------------------------- response


class _FenceStripper:
    """Removes a Markdown code fence around a reply, fed in pieces (for json_object)."""

    def __init__(self) -> None:
        self._head = ""
        self._decided = False
        self._fenced = False
        self._tail = ""

    def feed(self, text: str) -> str:
        if not self._decided:
            self._head += text
            s = self._head.lstrip()
            if not s or "```".startswith(s):
                return ""  # only whitespace or the start of a fence so far
            if s.startswith("```"):
                nl = s.find("\n")
                if nl < 0:
                    return ""  # wait for the end of the opening fence line
                self._fenced = True
                text = s[nl + 1 :]
            else:
                text = self._head
            self._decided = True
            self._head = ""
        if not self._fenced:
            return text
        buf = self._tail + text
        m = re.search(r"[\s`]*\Z", buf)
        cut = m.start() if m else len(buf)
        self._tail = buf[cut:]
        return buf[:cut]

    def flush(self) -> str:
        if not self._decided:
            out, self._head = self._head, ""
            return out
        tail, self._tail = self._tail, ""
        return "" if "```" in tail else tail


def strip_fence(text: str) -> str:
    f = _FenceStripper()
    return f.feed(text) + f.flush()


def _usage(u: Any) -> dict[str, Any]:
    u = u if isinstance(u, dict) else {}
    cache_read = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + cache_read + (u.get("cache_creation_input_tokens") or 0)
    completion = u.get("output_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }


def _json_tool_content(value: Any, plan: _Plan) -> str:
    if plan.json_wrapped and isinstance(value, dict) and "value" in value:
        value = value["value"]
    return orjson.dumps(value).decode()


def from_anthropic(data: dict[str, Any], model: str | None, plan: _Plan) -> dict[str, Any]:
    """An OpenAI chat.completion dict for an Anthropic message."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    json_answer: str | None = None
    for block in data.get("content") or []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            if plan.json_tool and block.get("name") == plan.json_tool and json_answer is None:
                json_answer = _json_tool_content(block.get("input"), plan)
                continue
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    if json_answer is not None:
        content: str | None = json_answer
    elif texts:
        content = "".join(texts)
        if plan.json_object:
            content = strip_fence(content)
    else:
        content = None
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    finish = FINISH_REASONS.get(data.get("stop_reason") or "", "stop")
    if finish == "tool_calls" and not tool_calls:
        finish = "stop"  # only the response_format tool was called
    anthropic_id = data.get("id")
    return {
        "id": f"chatcmpl-{anthropic_id}" if anthropic_id else new_completion_id(),
        "object": "chat.completion",
        "created": now(),
        "model": data.get("model") or model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(data.get("usage")),
    }


def _merge_choices(results: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(results[0])
    merged["choices"] = []
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    cached = 0
    for i, r in enumerate(results):
        merged["choices"].append({**r["choices"][0], "index": i})
        for k in totals:
            totals[k] += r["usage"][k]
        cached += r["usage"]["prompt_tokens_details"]["cached_tokens"]
    merged["usage"] = {**totals, "prompt_tokens_details": {"cached_tokens": cached}}
    return merged


async def _all_or_nothing(calls: list[Awaitable[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run calls concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# --------------------------------------------------------------------------- streaming


@dataclass(slots=True)
class _StreamState:
    """Turns Anthropic stream events into OpenAI chunks."""

    plan: _Plan
    model: str | None
    include_usage: bool
    id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=now)
    started: bool = False  # the role chunk went out
    done: bool = False
    blocks: dict[int, tuple[str, int]] = field(default_factory=dict)  # index -> (kind, tool index)
    tool_count: int = 0
    json_parts: list[str] = field(default_factory=list)
    stop_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    fence: _FenceStripper | None = None

    def __post_init__(self) -> None:
        if self.plan.json_object:
            self.fence = _FenceStripper()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def _emit(self, out: list[dict[str, Any]], delta: dict[str, Any], finish: str | None = None) -> None:
        if not self.started:  # the role chunk goes out with the first real content
            self.started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))
        out.append(self._chunk(delta, finish))

    def _text(self, out: list[dict[str, Any]], text: str) -> None:
        if self.fence is not None:
            text = self.fence.feed(text)
        if text:
            self._emit(out, {"content": text})

    def feed(self, name: str, ev: dict[str, Any]) -> list[dict[str, Any]]:
        kind = ev.get("type")
        out: list[dict[str, Any]] = []
        if kind == "message_start":
            msg = ev.get("message") or {}
            if msg.get("id"):
                self.id = f"chatcmpl-{msg['id']}"
            self.model = msg.get("model") or self.model
            self.usage.update({k: v for k, v in (msg.get("usage") or {}).items() if v is not None})
        elif kind == "content_block_start":
            index = ev.get("index", 0)
            block = ev.get("content_block") or {}
            btype = block.get("type")
            if btype == "text":
                self.blocks[index] = ("text", -1)
                if block.get("text"):
                    self._text(out, block["text"])
            elif btype == "tool_use":
                if self.plan.json_tool and block.get("name") == self.plan.json_tool:
                    self.blocks[index] = ("json", -1)
                else:
                    k = self.tool_count
                    self.tool_count += 1
                    self.blocks[index] = ("tool", k)
                    call = {
                        "index": k,
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""},
                    }
                    self._emit(out, {"tool_calls": [call]})
            else:
                self.blocks[index] = ("other", -1)  # thinking and the like: dropped
        elif kind == "content_block_delta":
            kind_k = self.blocks.get(ev.get("index", 0), ("other", -1))
            delta = ev.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta" and kind_k[0] == "text":
                self._text(out, str(delta.get("text") or ""))
            elif dtype == "input_json_delta":
                part = str(delta.get("partial_json") or "")
                if not part:
                    pass
                elif kind_k[0] == "json":
                    if self.plan.json_wrapped:
                        self.json_parts.append(part)  # unwrapped once complete
                    else:
                        self._emit(out, {"content": part})
                elif kind_k[0] == "tool":
                    self._emit(out, {"tool_calls": [{"index": kind_k[1], "function": {"arguments": part}}]})
        elif kind == "content_block_stop":
            kind_k = self.blocks.get(ev.get("index", 0), ("other", -1))
            if kind_k[0] == "json" and self.plan.json_wrapped:
                raw = "".join(self.json_parts) or "{}"
                self.json_parts = []
                try:
                    value = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        f"{name}: malformed tool input in the stream", retryable=True, kind="malformed"
                    ) from None
                self._emit(out, {"content": _json_tool_content(value, self.plan)})
        elif kind == "message_delta":
            delta = ev.get("delta") or {}
            if delta.get("stop_reason"):
                self.stop_reason = delta["stop_reason"]
            self.usage.update({k: v for k, v in (ev.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            if self.fence is not None:
                rest = self.fence.flush()
                if rest:
                    self._emit(out, {"content": rest})
            finish = FINISH_REASONS.get(self.stop_reason or "", "stop")
            if finish == "tool_calls" and self.tool_count == 0:
                finish = "stop"
            self._emit(out, {}, finish)
            if self.include_usage:
                out.append(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": _usage(self.usage),
                    }
                )
            self.done = True
        elif kind == "error":
            err = ev.get("error")
            if isinstance(err, dict):
                msg = f"{err.get('type') or 'error'}: {err.get('message') or ''}".strip()
            else:
                msg = str(err)
            raise UpstreamError(f"{name}: error event in stream: {msg}", retryable=True, kind="stream_error")
        # ping and unknown events are ignored
        return out


# --------------------------------------------------------------------------- provider


class AnthropicProvider(HttpProvider):
    type = "anthropic"
    Options = AnthropicOptions
    options: AnthropicOptions

    def __init__(self, name: str, options: AnthropicOptions) -> None:
        super().__init__(name, options)
        self._url = f"{options.base_url.rstrip('/')}/v1/messages"
        headers = {"content-type": "application/json", **options.headers}
        headers["anthropic-version"] = options.anthropic_version
        if options.api_key is not None:
            headers["x-api-key"] = options.api_key.get_secret_value()
        self._http = HttpClient(headers, options.max_connections, name, (self._url,))

    def error_message(self, raw: bytes) -> str:
        return _error_message(raw)

    async def _post(self, payload: dict[str, Any], t: CallTimeouts) -> dict[str, Any]:
        data = await self.post_json(self._url, payload, t)
        if data.get("type") == "error":
            raw = orjson.dumps(data)
            raise UpstreamError(
                f"{self.name}: error response: {_error_message(raw)}", retryable=True, kind="upstream_error"
            )
        if not isinstance(data.get("content"), list):
            raise malformed(self.name, "response has no 'content' array")
        return data

    async def chat(self, body: dict[str, Any], timeouts: CallTimeouts) -> dict[str, Any]:
        payload, plan = to_anthropic(self.name, body, self.options)
        n = body.get("n") or 1
        if n == 1:
            return from_anthropic(await self._post(payload, timeouts), body.get("model"), plan)
        datas = await _all_or_nothing([self._post(payload, timeouts) for _ in range(n)])
        return _merge_choices([from_anthropic(d, body.get("model"), plan) for d in datas])

    async def stream(self, body: dict[str, Any], timeouts: CallTimeouts) -> AsyncIterator[dict[str, Any]]:
        if (body.get("n") or 1) > 1:
            raise UpstreamError(
                f"{self.name}: n>1 streaming is not supported by anthropic",
                status=400,
                retryable=False,
                failover=False,
                kind="unsupported",
            )
        payload, plan = to_anthropic(self.name, body, self.options)
        payload["stream"] = True
        so = body.get("stream_options")
        state = _StreamState(
            plan=plan,
            model=body.get("model"),
            include_usage=bool(isinstance(so, dict) and so.get("include_usage")),
        )
        resp = await self.open_stream(self._url, payload, timeouts)
        try:
            async for event, data in read_sse(resp, self.name, timeouts):
                ev = loads_event(self.name, data)
                if not isinstance(ev, dict):
                    raise malformed(self.name, "stream event is not a JSON object")
                if "type" not in ev and event:
                    ev["type"] = event
                for chunk in state.feed(self.name, ev):
                    yield chunk
                if state.done:
                    return
            raise UpstreamError(
                f"{self.name}: stream ended before message_stop", retryable=True, kind="truncated"
            )
        finally:
            resp.close()
