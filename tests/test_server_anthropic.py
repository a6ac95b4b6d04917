"""An OpenAI client talking to an Anthropic backend through `shipyard serve`."""

from __future__ import annotations

import json

from conftest import client_for, fast_alias
from fakes import Fault

MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def config(fake_openai, fake_anthropic):
    return {
        "providers": {
            "primary": {"type": "openai", "base_url": fake_openai.base_url, "api_key": "sk-a"},
            "backup": {"type": "anthropic", "base_url": fake_anthropic.url, "api_key": "sk-ant-b"},
        },
        "models": {
            "claude": fast_alias({"provider": "backup", "model": "claude-3-5-haiku-20241022"}),
            "chat": fast_alias({"provider": "primary", "model": "gpt-4o-mini-2024-07-18"},
                               {"provider": "backup", "model": "claude-3-5-haiku-20241022"}, retries=0),
        },
        "prices": {"claude-3-5-haiku-20241022": {"input": 0.8, "output": 4.0}},
    }


def test_openai_sdk_to_anthropic_plain_stream_tools_and_schema(serve, fake_openai, fake_anthropic):
    fake_anthropic.reply_text = "Hello from Claude"
    fake_anthropic.usage = (100, 20)
    server = serve(config(fake_openai, fake_anthropic))
    client = client_for(server)

    raw = client.chat.completions.with_raw_response.create(model="claude", messages=MSG, max_tokens=64)
    resp = raw.parse()
    assert resp.choices[0].message.content == "Hello from Claude"
    assert resp.choices[0].finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (100, 20)
    sent = fake_anthropic.requests[-1]
    assert sent["path"] == "/v1/messages" and sent["json"]["system"] == "Be brief."
    assert sent["json"]["messages"] == [{"role": "user", "content": "Hi"}]
    assert sent["headers"]["x-api-key"] == "sk-ant-b"
    server.flush()
    span = server.engine.store.get_trace(raw.headers["x-shipyard-trace-id"])["spans"][0]
    assert span["cost_usd"] == (100 * 0.8 + 20 * 4.0) / 1e6

    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="claude", messages=MSG, stream=True) if c.choices)
    assert text == "Hello from Claude"

    fake_anthropic.reply_tool_calls = [{"name": "lookup", "arguments": {"q": "x"}}]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    resp = client.chat.completions.create(model="claude", messages=MSG, tools=tools)
    assert resp.choices[0].finish_reason == "tool_calls"
    assert json.loads(resp.choices[0].message.tool_calls[0].function.arguments) == {"q": "x"}

    fake_anthropic.reply_tool_calls = None
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    resp = client.chat.completions.create(
        model="claude", messages=MSG,
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}})
    assert json.loads(resp.choices[0].message.content) == {"answer": "fake"}
    assert fake_anthropic.requests[-1]["json"]["tool_choice"] == {"type": "tool", "name": "reply"}


def test_openai_outage_falls_over_to_anthropic(serve, fake_openai, fake_anthropic):
    fake_openai.fail_next(Fault("status", status=503), times=5)
    fake_anthropic.reply_text = "Claude covers"
    server = serve(config(fake_openai, fake_anthropic))
    client = client_for(server)
    assert client.chat.completions.create(model="chat", messages=MSG).choices[0].message.content == "Claude covers"
    chunks = list(client.chat.completions.create(model="chat", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Claude covers"


def test_anthropic_overloaded_mid_stream_is_an_error_event(serve, fake_openai, fake_anthropic):
    fake_anthropic.reply_text = "a b c d e f"
    fake_anthropic.fail_next(Fault("stream_error", status=529, after_chunks=2))
    server = serve(config(fake_openai, fake_anthropic))
    import openai
    import pytest

    with pytest.raises(openai.APIError):
        for _ in client_for(server).chat.completions.create(model="claude", messages=MSG, stream=True):
            pass
