"""Tests for the fake upstream servers themselves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from fakes import FakeAnthropic, FakeOpenAI, Fault

MESSAGES = [{"role": "user", "content": "hi"}]
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test"}


@pytest.fixture
def oai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def ant() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def client(oai: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=oai.base_url, api_key="sk-test", max_retries=0, timeout=5)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **kwargs)  # type: ignore[arg-type]


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """Parse an SSE body into (event name, data) pairs."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event"), fields["data"]))
    return events


def post_messages(server: FakeAnthropic, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", ANTHROPIC_HEADERS)
    return httpx.post(f"{server.base_url}/messages", json=body, headers=headers, timeout=5, **kwargs)


def message_body(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 64, "messages": MESSAGES, **extra}


# =========================================================================== lifecycle & base


def test_urls_and_stop() -> None:
    server = FakeOpenAI().start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert server.base_url == server.url + "/v1"
        assert httpx.get(server.base_url + "/models").status_code == 200
    finally:
        server.stop()
    with pytest.raises(RuntimeError):
        _ = server.url
    server.stop()  # idempotent


def test_unknown_fault_kind_rejected() -> None:
    with pytest.raises(ValueError):
        Fault("explode")  # type: ignore[arg-type]


def test_fault_queue_is_fifo_and_clear(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    oai.fail_next(Fault("status", status=503), times=2)
    oai.fail_next(Fault("status", status=429))
    for expected in (openai.InternalServerError, openai.InternalServerError, openai.RateLimitError):
        with pytest.raises(expected):
            chat(client)
    assert chat(client).choices[0].message.content == "Hello from fake-openai"
    assert len(oai.requests) == 4
    oai.fail_next(Fault("status"))
    oai.clear()
    assert oai.requests == [] and oai.pending_faults == 0
    chat(client)


# =========================================================================== OpenAI: happy paths


def test_openai_chat_completion(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    resp = chat(client, n=2)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-fake")
    assert resp.model == "gpt-4o-mini" and resp.system_fingerprint == "fp_fake"
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.choices[0].message.content == "Hello from fake-openai"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (11, 7, 18)
    [recorded] = oai.requests
    assert recorded["method"] == "POST" and recorded["path"] == "/v1/chat/completions"
    assert recorded["headers"]["authorization"] == "Bearer sk-test"
    assert recorded["json"]["messages"] == MESSAGES


def test_openai_reply_settings(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    oai.reply_text = "one two three four five"
    oai.usage = (3, 4)
    resp = chat(client)
    assert resp.choices[0].message.content == "one two three four five"
    assert resp.usage is not None and resp.usage.total_tokens == 7


def test_openai_json_mode(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    resp = chat(client, response_format={"type": "json_object"})
    assert json.loads(resp.choices[0].message.content) == {"answer": "fake"}
    oai.reply_text = '{"x": 1}'
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert chat(client, response_format=schema).choices[0].message.content == '{"x": 1}'


def test_openai_stop_and_max_tokens(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    oai.reply_text = "alpha beta gamma. delta epsilon"
    assert chat(client, stop=["gamma", "epsilon"]).choices[0].message.content == "alpha beta "
    limited = chat(client, max_tokens=2).choices[0]
    assert (limited.message.content, limited.finish_reason) == ("alpha beta", "length")
    limited = chat(client, max_completion_tokens=3).choices[0]
    assert (limited.message.content, limited.finish_reason) == ("alpha beta gamma.", "length")


def test_openai_tool_calls(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    oai.reply_tool_calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    choice = chat(client).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


def test_openai_stream_text(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake-openai"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 3
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18


def test_openai_stream_raw_format(oai: FakeOpenAI) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    resp = httpx.post(oai.base_url + "/chat/completions", json=body, timeout=5)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert all(name is None for name, _ in events)
    assert events[-1][1] == "[DONE]"
    assert "usage" not in json.loads(events[-2][1])


def test_openai_stream_tool_calls(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    oai.reply_tool_calls = [
        {"name": "lookup", "arguments": {"query": "a fairly long query string"}},
        {"name": "noop", "arguments": {}},
    ]
    chunks = list(chat(client, stream=True))
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for tc in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += tc.id or ""
            entry["name"] += (tc.function and tc.function.name) or ""
            entry["arguments"] += (tc.function and tc.function.arguments) or ""
    assert calls[0]["name"] == "lookup" and json.loads(calls[0]["arguments"]) == {"query": "a fairly long query string"}
    assert calls[1]["name"] == "noop" and json.loads(calls[1]["arguments"]) == {}
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_embeddings(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    first = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])  # base64 on the wire
    assert [d.index for d in first.data] == [0, 1] and len(first.data[0].embedding) == 8
    assert first.data[0].embedding != first.data[1].embedding
    assert first.usage.prompt_tokens == first.usage.total_tokens == 11
    floats = client.embeddings.create(model="e", input="a", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(first.data[0].embedding, abs=1e-6)
    oai.embedding_dim = 3
    assert len(client.embeddings.create(model="e", input="a").data[0].embedding) == 3
    assert len(client.embeddings.create(model="e", input="a", dimensions=5).data[0].embedding) == 5


def test_openai_models_and_404(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    assert len(list(client.models.list())) >= 2
    resp = httpx.post(oai.base_url + "/nope", json={})
    assert resp.status_code == 404
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_openai_require_key(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    oai.require_key = "sk-right"
    with pytest.raises(openai.AuthenticationError):
        chat(client)
    good = openai.OpenAI(base_url=oai.base_url, api_key="sk-right", max_retries=0)
    assert chat(good).choices[0].message.content


async def test_openai_async_client(oai: FakeOpenAI) -> None:
    client = openai.AsyncOpenAI(base_url=oai.base_url, api_key="sk-test", max_retries=0)
    resp = await client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert resp.choices[0].message.content == "Hello from fake-openai"
    pieces = [c.choices[0].delta.content async for c in await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True  # type: ignore[arg-type]
    )]
    assert "".join(p or "" for p in pieces) == "Hello from fake-openai"
    await client.close()


# =========================================================================== OpenAI: faults


def test_status_fault_with_retry_after(oai: FakeOpenAI) -> None:
    oai.fail_next(Fault("status", status=429, retry_after=3))
    resp = httpx.post(oai.base_url + "/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert resp.status_code == 429 and resp.headers["retry-after"] == "3"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"


def test_status_fault_custom_body(oai: FakeOpenAI) -> None:
    oai.fail_next(Fault("status", status=400, body={"error": {"message": "context_length_exceeded"}}))
    oai.fail_next(Fault("status", status=502, body="<html>bad gateway</html>"))
    url = oai.base_url + "/chat/completions"
    assert httpx.post(url, json={}).json() == {"error": {"message": "context_length_exceeded"}}
    resp = httpx.post(url, json={})
    assert resp.status_code == 502 and resp.text == "<html>bad gateway</html>"


def test_delay_fault(oai: FakeOpenAI) -> None:
    oai.fail_next(Fault("delay", seconds=1.0))
    client = openai.OpenAI(base_url=oai.base_url, api_key="k", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        chat(client)


def test_first_chunk_delay_fault(oai: FakeOpenAI) -> None:
    oai.fail_next(Fault("first_chunk_delay", seconds=0.5))
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", oai.base_url + "/chat/completions", json=body, timeout=5) as resp:
        headers_at = time.monotonic() - started
        assert resp.status_code == 200
        next(resp.iter_lines())
        first_chunk_at = time.monotonic() - started
    assert headers_at < 0.4 <= first_chunk_at


def test_reset_fault(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    oai.fail_next(Fault("reset"))
    with pytest.raises(openai.APIConnectionError):
        chat(client)
    oai.fail_next(Fault("reset"))
    with pytest.raises(httpx.TransportError):
        httpx.post(oai.base_url + "/chat/completions", json={})
    assert chat(client).choices[0].message.content


def test_malformed_fault(oai: FakeOpenAI) -> None:
    oai.fail_next(Fault("malformed"))
    resp = httpx.post(oai.base_url + "/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        resp.json()


def test_cut_stream_fault(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    oai.fail_next(Fault("cut_stream", after_chunks=2))
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in chat(client, stream=True):
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "Hello", " from"]
    oai.fail_next(Fault("cut_stream"))
    with pytest.raises(openai.APIConnectionError):
        chat(client)


def test_hang_stream_fault_counts_disconnect(oai: FakeOpenAI) -> None:
    oai.fail_next(Fault("hang_stream", after_chunks=1))
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    lines: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        with httpx.stream("POST", oai.base_url + "/chat/completions", json=body, timeout=0.5) as resp:
            lines.extend(line for line in resp.iter_lines() if line)
    assert len(lines) == 2  # role chunk + one content chunk
    assert oai.wait_for_disconnect(timeout=5)
    assert oai.disconnects == 1


def test_client_abandoning_stream_counts_disconnect(oai: FakeOpenAI) -> None:
    oai.chunk_delay = 0.2
    oai.reply_text = "many words " * 10
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", oai.base_url + "/chat/completions", json=body, timeout=5) as resp:
        next(resp.iter_lines())
    assert oai.wait_for_disconnect(timeout=5)
    assert not oai.wait_for_disconnect(timeout=0.1, count=2)
    oai.clear()
    assert oai.disconnects == 0


def test_stream_error_fault(oai: FakeOpenAI) -> None:
    oai.fail_next(Fault("stream_error", status=500, after_chunks=1))
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    events = sse_events(httpx.post(oai.base_url + "/chat/completions", json=body).text)
    assert json.loads(events[-1][1])["error"]["type"] == "server_error"
    assert len(events) == 3


async def test_faults_apply_to_aiohttp_clients(oai: FakeOpenAI) -> None:
    oai.fail_next(Fault("status", status=500))
    async with aiohttp.ClientSession() as session:
        async with session.post(oai.base_url + "/chat/completions", json={}) as resp:
            assert resp.status == 500
            assert (await resp.json())["error"]["type"] == "server_error"


# =========================================================================== Anthropic


def test_anthropic_message(ant: FakeAnthropic) -> None:
    resp = post_messages(ant, message_body(system=[{"type": "text", "text": "be brief"}]))
    assert resp.status_code == 200
    msg = resp.json()
    assert msg["id"].startswith("msg_fake") and msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["model"] == "claude-test"
    assert msg["content"] == [{"type": "text", "text": "Hello from fake-anthropic"}]
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("end_turn", None)
    assert msg["usage"] == {
        "input_tokens": 11,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert ant.requests[0]["headers"]["x-api-key"] == "sk-ant-test"


@pytest.mark.parametrize(
    ("headers", "status", "error_type"),
    [
        ({"x-api-key": "sk-ant-test"}, 400, "invalid_request_error"),
        ({"anthropic-version": "2023-06-01", "x-api-key": "wrong"}, 401, "authentication_error"),
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
    ],
)
def test_anthropic_headers(ant: FakeAnthropic, headers: dict[str, str], status: int, error_type: str) -> None:
    ant.require_key = "sk-ant-test"
    resp = post_messages(ant, message_body(), headers=headers)
    assert resp.status_code == status
    assert resp.json()["type"] == "error" and resp.json()["error"]["type"] == error_type


@pytest.mark.parametrize(
    "body",
    [
        {"model": "c", "messages": MESSAGES},
        message_body(messages=[{"role": "system", "content": "x"}]),
        message_body(system=[{"type": "image"}]),
        message_body(system=42),
        message_body(messages=[]),
    ],
)
def test_anthropic_validation(ant: FakeAnthropic, body: dict[str, Any]) -> None:
    resp = post_messages(ant, body)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_anthropic_stop_sequences_and_max_tokens(ant: FakeAnthropic) -> None:
    ant.reply_text = "alpha beta gamma delta"
    msg = post_messages(ant, message_body(stop_sequences=["gamma"])).json()
    assert msg["content"][0]["text"] == "alpha beta "
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("stop_sequence", "gamma")
    msg = post_messages(ant, message_body(max_tokens=2)).json()
    assert (msg["content"][0]["text"], msg["stop_reason"], msg["stop_sequence"]) == ("alpha beta", "max_tokens", None)


def test_anthropic_tool_use(ant: FakeAnthropic) -> None:
    tools = [{"name": "emit", "input_schema": {"type": "object"}}]
    forced = message_body(tools=tools, tool_choice={"type": "tool", "name": "emit"})
    msg = post_messages(ant, forced).json()
    [block] = msg["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"], msg["stop_reason"]) == ("emit", {"answer": "fake"}, "tool_use")
    unknown = message_body(tools=tools, tool_choice={"type": "tool", "name": "missing"})
    assert post_messages(ant, unknown).json()["content"][0]["type"] == "text"
    ant.reply_tool_calls = [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]
    msg = post_messages(ant, forced).json()
    assert [(b["name"], b["input"]) for b in msg["content"]] == [("a", {"x": 1}), ("b", {})]


def test_anthropic_stream_text(ant: FakeAnthropic) -> None:
    resp = post_messages(ant, message_body(stream=True))
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(data) for _, data in events]
    assert all(p["type"] == name for p, name in zip(payloads, names, strict=True))
    start = payloads[0]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] == 11 and start["usage"]["output_tokens"] == 1
    assert payloads[1]["content_block"] == {"type": "text", "text": ""}
    text = "".join(p["delta"]["text"] for p in payloads if p["type"] == "content_block_delta")
    assert text == "Hello from fake-anthropic"
    assert payloads[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert payloads[-2]["usage"] == {"output_tokens": 7}


def test_anthropic_stream_tool_use(ant: FakeAnthropic) -> None:
    ant.reply_tool_calls = [{"name": "lookup", "arguments": {"query": "a fairly long query string"}}]
    payloads = [json.loads(d) for _, d in sse_events(post_messages(ant, message_body(stream=True)).text)]
    block = payloads[1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "lookup" and block["input"] == {}
    deltas = [p["delta"] for p in payloads if p["type"] == "content_block_delta"]
    assert all(d["type"] == "input_json_delta" for d in deltas) and len(deltas) > 1
    assert json.loads("".join(d["partial_json"] for d in deltas)) == {"query": "a fairly long query string"}
    assert payloads[-2]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_status_faults(ant: FakeAnthropic, status: int, error_type: str) -> None:
    ant.fail_next(Fault("status", status=status, retry_after=7))
    resp = post_messages(ant, message_body())
    assert resp.status_code == status and resp.headers["retry-after"] == "7"
    assert resp.json()["type"] == "error" and resp.json()["error"]["type"] == error_type
    assert post_messages(ant, message_body()).status_code == 200


def test_anthropic_cut_stream(ant: FakeAnthropic) -> None:
    ant.fail_next(Fault("cut_stream", after_chunks=1))
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream(
            "POST", ant.base_url + "/messages", json=message_body(stream=True), headers=ANTHROPIC_HEADERS
        ) as resp:
            lines.extend(resp.iter_lines())
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta"]


def test_anthropic_stream_error_event(ant: FakeAnthropic) -> None:
    ant.fail_next(Fault("stream_error", status=529, after_chunks=0))
    events = sse_events(post_messages(ant, message_body(stream=True)).text)
    assert [name for name, _ in events] == ["message_start", "content_block_start", "ping", "error"]
    assert json.loads(events[-1][1])["error"]["type"] == "overloaded_error"


async def test_anthropic_hang_stream_async(ant: FakeAnthropic) -> None:
    ant.fail_next(Fault("hang_stream", after_chunks=2))
    received: list[str] = []
    timeout = aiohttp.ClientTimeout(sock_read=0.5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(TimeoutError):
            async with session.post(
                ant.base_url + "/messages", json=message_body(stream=True), headers=ANTHROPIC_HEADERS
            ) as resp:
                async for raw in resp.content:
                    if raw.startswith(b"event: "):
                        received.append(raw.decode().strip().removeprefix("event: "))
    assert received.count("content_block_delta") == 2 and "message_stop" not in received
    assert ant.wait_for_disconnect(timeout=5)


def test_anthropic_models_and_count_tokens(ant: FakeAnthropic) -> None:
    models = httpx.get(ant.base_url + "/models", headers=ANTHROPIC_HEADERS).json()
    assert len(models["data"]) >= 2 and models["data"][0]["type"] == "model"
    resp = httpx.post(ant.base_url + "/messages/count_tokens", json=message_body(), headers=ANTHROPIC_HEADERS)
    assert resp.json() == {"input_tokens": 11}
    resp = httpx.get(ant.base_url + "/nope", headers=ANTHROPIC_HEADERS)
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found_error"
