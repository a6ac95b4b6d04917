"""AnthropicProvider against the loopback FakeAnthropic: translation both ways, streaming, errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError

from fakes import FakeAnthropic, Fault
from shipyard.errors import UpstreamError
from shipyard.providers.anthropic import (
    JSON_OBJECT_INSTRUCTION,
    AnthropicOptions,
    AnthropicProvider,
    from_anthropic,
    strip_fence,
    to_anthropic,
    _Plan,
)
from shipyard.providers.base import CallTimeouts

T = CallTimeouts(total=5, connect=2)
MODEL = "claude-3-5-haiku-latest"


@pytest.fixture
def up():
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def provider(up):
    p = AnthropicProvider(
        "backup",
        AnthropicProvider.Options.model_validate({"type": "anthropic", "base_url": up.url, "api_key": "sk-ant-test"}),
    )
    await p.start()
    yield p
    await p.close()


def body(**kw: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    b.update(kw)
    return b


async def collect(p: AnthropicProvider, b: dict[str, Any], t: CallTimeouts = T) -> list[dict[str, Any]]:
    return [c async for c in p.stream(b, t)]


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def finish_of(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


def opts(**kw: Any) -> AnthropicOptions:
    return AnthropicOptions.model_validate({"type": "anthropic", **kw})


# --------------------------------------------------------------------------- options


def test_options_defaults_and_extra_forbidden():
    o = opts()
    assert o.base_url == "https://api.anthropic.com"
    assert o.anthropic_version == "2023-06-01"
    assert o.default_max_tokens == 4096
    with pytest.raises(ValidationError):
        opts(api_base="x")


def test_registry_builds_anthropic():
    from shipyard.providers.registry import build_provider

    p = build_provider("claude", {"type": "anthropic", "api_key": "k"})
    assert isinstance(p, AnthropicProvider)


# --------------------------------------------------------------------------- request translation


async def test_request_translation_on_the_wire(up, provider):
    b = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
            {
                "role": "assistant",
                "content": "let me look",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"q": "a"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "get", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "result a"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "result b"}]},
            {"role": "user", "content": "thanks, and?"},
        ],
        "stop": "END",
        "temperature": 1.6,
        "top_p": 1,
        "seed": 7,
        "presence_penalty": 0.5,
        "user": "u-42",
    }
    resp = await provider.chat(b, T)
    assert resp["choices"][0]["message"]["content"] == "Hello from fake-anthropic"
    [req] = up.requests
    assert req["method"] == "POST" and req["path"] == "/v1/messages"
    assert req["headers"]["x-api-key"] == "sk-ant-test"
    assert req["headers"]["anthropic-version"] == "2023-06-01"
    assert req["headers"]["content-type"] == "application/json"
    sent = req["json"]
    assert sent["model"] == MODEL
    assert sent["system"] == "Be brief.\n\nAnswer in English."
    assert sent["max_tokens"] == 4096
    assert sent["stop_sequences"] == ["END"]
    assert sent["temperature"] == 1.0  # clamped to Anthropic's range
    assert "top_p" not in sent
    assert sent["metadata"] == {"user_id": "u-42"}
    for dropped in ("seed", "presence_penalty", "user", "stop", "n", "stream"):
        assert dropped not in sent
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "let me look"},
                {"type": "tool_use", "id": "call_1", "name": "get", "input": {"q": "a"}},
                {"type": "tool_use", "id": "call_2", "name": "get", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "result a"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "result b"}]},
                {"type": "text", "text": "thanks, and?"},
            ],
        },
    ]


async def test_max_tokens_and_version_configurable(up):
    p = AnthropicProvider(
        "a",
        opts(base_url=up.url, api_key="k", anthropic_version="2024-01-01", default_max_tokens=77, headers={"x-extra": "1"}),
    )
    await p.start()
    try:
        await p.chat(body(), T)
        await p.chat(body(max_tokens=50), T)
        await p.chat(body(max_tokens=50, max_completion_tokens=60), T)
    finally:
        await p.close()
    assert [r["json"]["max_tokens"] for r in up.requests] == [77, 50, 60]
    assert up.requests[0]["headers"]["anthropic-version"] == "2024-01-01"
    assert up.requests[0]["headers"]["x-extra"] == "1"


def test_images_and_documents():
    b = body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
                ],
            }
        ]
    )
    sent, _ = to_anthropic("a", b, opts())
    assert sent["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
    ]


def test_unsupported_part_fails_over():
    b = body(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}])
    with pytest.raises(UpstreamError) as ei:
        to_anthropic("a", b, opts())
    assert ei.value.failover is True and ei.value.retryable is False


async def test_invalid_tool_arguments_is_a_client_error(up, provider):
    b = body(
        messages=[
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
            },
            {"role": "tool", "tool_call_id": "c", "content": "r"},
        ]
    )
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(b, T)
    err = ei.value
    assert err.status == 400 and not err.retryable and not err.failover
    assert "messages[1].tool_calls[0].function.arguments" in err.message and "JSON" in err.message
    with pytest.raises(UpstreamError):
        await provider.stream(b, T).__anext__()
    assert up.requests == []


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "now"}},
]


@pytest.mark.parametrize(
    "choice, parallel, expected",
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "now"}}, None, {"type": "tool", "name": "now"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tools_and_tool_choice(choice, parallel, expected):
    b = body(tools=TOOLS)
    if choice is not None:
        b["tool_choice"] = choice
    if parallel is not None:
        b["parallel_tool_calls"] = parallel
    sent, _ = to_anthropic("a", b, opts())
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert sent.get("tool_choice") == expected


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def json_schema_body(**kw: Any) -> dict[str, Any]:
    return body(response_format={"type": "json_schema", "json_schema": {"name": "my answer!", "schema": SCHEMA}}, **kw)


async def test_json_schema_forces_a_tool(up, provider):
    resp = await provider.chat(json_schema_body(), T)
    sent = up.requests[0]["json"]
    assert sent["tools"] == [
        {"name": "my_answer_", "description": sent["tools"][0]["description"], "input_schema": SCHEMA}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "my_answer_"}
    choice = resp["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"answer": "fake"}
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"


async def test_json_schema_streams_as_content(up, provider):
    chunks = await collect(provider, json_schema_body())
    assert json.loads(content_of(chunks)) == {"answer": "fake"}
    assert finish_of(chunks) == ["stop"]
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks if c["choices"])


def test_json_schema_with_own_tools_and_non_object_schema():
    rf = {"type": "json_schema", "json_schema": {"name": "x" * 80, "schema": {"type": "array", "items": {"type": "integer"}}}}
    sent, plan = to_anthropic("a", body(tools=TOOLS, response_format=rf), opts())
    assert [t["name"] for t in sent["tools"]] == ["get_weather", "now", "x" * 64]
    assert sent["tool_choice"] == {"type": "any"}  # the model may still call the other tools
    assert sent["tools"][2]["input_schema"]["properties"]["value"]["type"] == "array"
    data = {
        "id": "msg_1",
        "model": MODEL,
        "content": [{"type": "tool_use", "id": "t", "name": "x" * 64, "input": {"value": [1, 2]}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    out = from_anthropic(data, MODEL, plan)
    assert out["choices"][0]["message"]["content"] == "[1,2]"
    assert out["choices"][0]["finish_reason"] == "stop"


async def test_json_object_instruction_and_fence_stripping(up, provider):
    up.reply_text = '```json\n{"a": 1}\n```'
    resp = await provider.chat(body(response_format={"type": "json_object"}), T)
    assert up.requests[0]["json"]["system"] == JSON_OBJECT_INSTRUCTION
    assert json.loads(resp["choices"][0]["message"]["content"]) == {"a": 1}
    chunks = await collect(provider, body(response_format={"type": "json_object"}))
    assert json.loads(content_of(chunks)) == {"a": 1}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('  ```\n{"a": "`"}\n```  \n', '{"a": "`"}'),
        ('{"a": 1}', '{"a": 1}'),
        ("`x`", "`x`"),
        ("", ""),
    ],
)
def test_strip_fence(text, expected):
    assert strip_fence(text) == expected


# --------------------------------------------------------------------------- response translation


async def test_text_response(up, provider):
    up.usage = (20, 5)
    resp = await provider.chat(body(), T)
    assert resp["object"] == "chat.completion"
    assert resp["id"].startswith("chatcmpl-msg_fake")
    assert resp["model"] == MODEL
    assert isinstance(resp["created"], int)
    assert resp["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from fake-anthropic"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert resp["usage"] == {
        "prompt_tokens": 20,
        "completion_tokens": 5,
        "total_tokens": 25,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_tool_call_response(up, provider):
    up.reply_tool_calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "now", "arguments": {}},
    ]
    resp = await provider.chat(body(tools=TOOLS), T)
    choice = resp["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "now"]
    assert all(c["type"] == "function" and c["id"].startswith("toolu_") for c in calls)
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert json.loads(calls[1]["function"]["arguments"]) == {}


async def test_finish_reasons_from_the_fake(up, provider):
    up.reply_text = "one two three four five STOP six"
    r = await provider.chat(body(max_tokens=2), T)
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["choices"][0]["message"]["content"] == "one two"
    r = await provider.chat(body(stop=["STOP"]), T)
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["message"]["content"] == "one two three four five "


@pytest.mark.parametrize(
    "stop_reason, finish",
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
     ("tool_use", "tool_calls"), ("refusal", "content_filter")],
)
async def test_finish_reason_mapping_and_cache_usage(up, provider, stop_reason, finish):
    msg = {
        "id": "msg_x",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "a"},
            {"type": "text", "text": "b"},
            {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
        ],
        "stop_reason": stop_reason,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 4,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5,
        },
    }
    up.fail_next(Fault("status", status=200, body=msg))
    resp = await provider.chat(body(), T)
    assert resp["id"] == "chatcmpl-msg_x"
    assert resp["model"] == "claude-sonnet-4-5"
    assert resp["choices"][0]["finish_reason"] == finish
    assert resp["choices"][0]["message"]["content"] == "ab"
    assert resp["usage"] == {
        "prompt_tokens": 115,
        "completion_tokens": 4,
        "total_tokens": 119,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


async def test_n_runs_concurrent_calls(up, provider):
    resp = await provider.chat(body(n=3), T)
    assert len(up.requests) == 3
    assert "n" not in up.requests[0]["json"]
    assert [c["index"] for c in resp["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "Hello from fake-anthropic" for c in resp["choices"])
    assert resp["usage"]["prompt_tokens"] == 33 and resp["usage"]["completion_tokens"] == 21


async def test_n_fails_if_any_call_fails(up, provider):
    up.fail_next(Fault("status", status=529))
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(body(n=2), T)
    assert ei.value.status == 529


async def test_n_streaming_is_rejected(up, provider):
    with pytest.raises(UpstreamError) as ei:
        await provider.stream(body(n=2, stream=True), T).__anext__()
    err = ei.value
    assert "n>1 streaming is not supported by anthropic" in err.message
    assert not err.retryable and not err.failover and err.status == 400
    assert up.requests == []


# --------------------------------------------------------------------------- streaming


async def test_stream_text(up, provider):
    up.reply_text = "The quick brown fox jumps"
    chunks = await collect(provider, body(stream=True, stream_options={"include_usage": True}))
    assert up.requests[0]["json"]["stream"] is True
    assert "stream_options" not in up.requests[0]["json"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-msg_fake")
    assert all(c["model"] == MODEL for c in chunks)
    assert content_of(chunks) == "The quick brown fox jumps"
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 1
    assert finish_of(chunks) == ["stop"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_stream_without_include_usage_has_no_usage_chunk(up, provider):
    chunks = await collect(provider, body(stream=True))
    assert all(c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_tool_calls(up, provider):
    up.reply_tool_calls = [
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
        {"name": "now", "arguments": {}},
    ]
    chunks = await collect(provider, body(tools=TOOLS, stream=True))
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for tc in c["choices"][0]["delta"].get("tool_calls") or []:
            slot = calls.setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
            if tc.get("id"):
                slot["id"] = tc["id"]
                assert tc["type"] == "function"
            fn = tc.get("function") or {}
            if fn.get("name"):
                slot["name"] = fn["name"]
            slot["arguments"] += fn.get("arguments") or ""
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("toolu_")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert calls[1]["name"] == "now" and json.loads(calls[1]["arguments"]) == {}
    assert finish_of(chunks) == ["tool_calls"]


async def test_stream_aclose_cancels_upstream(up, provider):
    up.fail_next(Fault("hang_stream", after_chunks=1))
    it = provider.stream(body(stream=True), T)
    first = await it.__anext__()
    assert first["choices"][0]["delta"]["role"] == "assistant"
    await it.aclose()
    assert await asyncio.to_thread(up.wait_for_disconnect, 5.0)


# --------------------------------------------------------------------------- errors


async def test_529_is_retryable_with_retry_after(up, provider):
    up.fail_next(Fault("status", status=529, retry_after=1))
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(body(), T)
    err = ei.value
    assert err.status == 529 and err.retryable and err.failover
    assert err.retry_after == 1.0
    assert "overloaded_error: Overloaded" in err.message and err.message.startswith("backup:")


async def test_400_does_not_fail_over(up, provider):
    up.fail_next(Fault("status", status=400))
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(body(), T)
    assert ei.value.status == 400 and not ei.value.retryable and not ei.value.failover
    assert "invalid_request_error" in ei.value.message


async def test_401_fails_over_without_retry(up, provider):
    up.require_key = "another-key"
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(body(), T)
    assert ei.value.status == 401 and not ei.value.retryable and ei.value.failover


async def test_malformed_json(up, provider):
    up.fail_next(Fault("malformed"))
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(body(), T)
    assert ei.value.kind == "malformed" and ei.value.retryable


async def test_connection_reset(up, provider):
    up.fail_next(Fault("reset"))
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(body(), T)
    assert ei.value.kind == "connection" and ei.value.retryable


async def test_timeout(up, provider):
    up.fail_next(Fault("delay", seconds=2))
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(body(), CallTimeouts(total=0.3, connect=2))
    assert ei.value.kind == "timeout" and ei.value.retryable


async def test_not_started_and_embeddings_unsupported(up):
    p = AnthropicProvider("a", opts(base_url=up.url))
    with pytest.raises(UpstreamError) as ei:
        await p.chat(body(), T)
    assert ei.value.kind == "not_started"
    with pytest.raises(UpstreamError) as ei:
        await p.embeddings({"model": "x", "input": "y"}, T)
    assert ei.value.kind == "unsupported"


async def test_stream_http_error_raises_on_first_anext(up, provider):
    up.fail_next(Fault("status", status=529, retry_after=2))
    it = provider.stream(body(stream=True), T)
    with pytest.raises(UpstreamError) as ei:
        await it.__anext__()
    assert ei.value.status == 529 and ei.value.retryable and ei.value.retry_after == 2.0


async def test_stream_error_event_before_content_raises_on_first_anext(up, provider):
    up.fail_next(Fault("stream_error", status=529, after_chunks=0))
    it = provider.stream(body(stream=True), T)
    with pytest.raises(UpstreamError) as ei:
        await it.__anext__()
    assert ei.value.kind == "stream_error" and ei.value.retryable
    assert "Overloaded" in ei.value.message


async def test_stream_error_event_mid_stream(up, provider):
    up.reply_text = "one two three four five"
    up.fail_next(Fault("stream_error", status=500, after_chunks=2))
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as ei:
        async for c in provider.stream(body(stream=True), T):
            got.append(c)
    assert ei.value.kind == "stream_error" and ei.value.retryable
    assert content_of(got) == "one two"


async def test_cut_stream(up, provider):
    up.reply_text = "one two three four five"
    up.fail_next(Fault("cut_stream", after_chunks=2))
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as ei:
        async for c in provider.stream(body(stream=True), T):
            got.append(c)
    assert ei.value.kind in ("truncated", "connection") and ei.value.retryable
    assert content_of(got) == "one two"
    assert not finish_of(got)


async def test_stream_malformed_is_not_an_event_stream(up, provider):
    up.fail_next(Fault("malformed"))
    with pytest.raises(UpstreamError) as ei:
        await provider.stream(body(stream=True), T).__anext__()
    assert ei.value.kind == "malformed"


async def test_stream_first_chunk_timeout(up, provider):
    up.fail_next(Fault("first_chunk_delay", seconds=2))
    with pytest.raises(UpstreamError) as ei:
        await provider.stream(body(stream=True), CallTimeouts(total=5, connect=2, ttft=0.2)).__anext__()
    assert ei.value.kind == "ttft_timeout" and ei.value.retryable


def test_plan_defaults_are_plain():
    out = from_anthropic({"id": "m", "content": [], "stop_reason": None, "usage": {}}, MODEL, _Plan())
    assert out["choices"][0]["message"] == {"role": "assistant", "content": None}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["model"] == MODEL
