"""The library face: ``shipyard.Gateway`` against loopback fake upstreams, sync and async,
returning OpenAI SDK objects and recording every call."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from conftest import fast_alias
from fakes import FakeOpenAI, Fault
from shipyard import Gateway
from shipyard.errors import GatewayError, InvalidRequest, NotFound
from shipyard.store import TraceFilter
from shipyard.store.sqlite import SQLiteStore

MESSAGES = [{"role": "user", "content": "hi"}]
PRICE_IN, PRICE_OUT = 0.15, 0.60  # USD per million tokens


def config(tmp_path: Path, *upstreams: FakeOpenAI, **alias_kw: Any) -> dict[str, Any]:
    """Alias 'chat' over the given upstreams in order, a SQLite file, and a price for gpt-4o-mini."""
    providers = {f"up{i}": {"type": "openai", "base_url": up.base_url, "api_key": f"sk-test-{i}"}
                 for i, up in enumerate(upstreams)}
    targets = [{"provider": f"up{i}", "model": "gpt-4o-mini"} for i in range(len(upstreams))]
    return {
        "store": f"sqlite:///{tmp_path}/lib.db",
        "providers": providers,
        "models": {"chat": fast_alias(*targets, **alias_kw)},
        "prices": {"gpt-4o-mini": {"input": PRICE_IN, "output": PRICE_OUT}},
    }


def expected_cost(up: FakeOpenAI) -> float:
    i, o = up.usage
    return (i * PRICE_IN + o * PRICE_OUT) / 1_000_000


def recorded(gw: Gateway, trace_id: str) -> dict[str, Any]:
    assert gw.engine.recorder.flush()
    trace = gw.engine.store.get_trace(trace_id)
    assert trace is not None, f"trace {trace_id} was not recorded"
    return trace


@pytest.fixture
def gw(tmp_path: Path, fake_openai: FakeOpenAI):
    g = Gateway(config(tmp_path, fake_openai))
    yield g
    g.close()


# ---- sync ---------------------------------------------------------------------------


def test_sync_chat_returns_chat_completion(gw: Gateway, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_text = "Hello there, library user"
    resp = gw.chat(model="chat", messages=MESSAGES, temperature=0.2, user="alice")
    assert isinstance(resp, ChatCompletion)
    assert resp.choices[0].message.content == "Hello there, library user"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 11 and resp.usage.completion_tokens == 7
    assert isinstance(resp.trace_id, str) and len(resp.trace_id) == 32

    (sent,) = fake_openai.requests
    assert sent["json"]["model"] == "gpt-4o-mini"  # the alias became the target's model
    assert sent["json"]["temperature"] == 0.2
    assert sent["headers"]["authorization"] == "Bearer sk-test-0"

    trace = recorded(gw, resp.trace_id)
    (span,) = trace["spans"]
    assert (span["alias"], span["provider"], span["model"]) == ("chat", "up0", "gpt-4o-mini")
    assert (span["input_tokens"], span["output_tokens"]) == (11, 7)
    assert span["cost_usd"] == pytest.approx(expected_cost(fake_openai))
    assert trace["cost_usd"] == pytest.approx(expected_cost(fake_openai))
    assert span["user_id"] == "alice"
    assert span["completion_id"] == resp.id
    assert span["input"]["messages"] == MESSAGES
    assert span["output"]["choices"][0]["message"]["content"] == "Hello there, library user"
    assert [a["outcome"] for a in span["attributes"]["attempts"]] == ["ok"]


def test_sync_stream_yields_chunks(gw: Gateway, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_text = "one two three four"
    chunks = list(gw.chat(model="chat", messages=MESSAGES, stream=True))
    assert len(chunks) > 2
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    trace_ids = {c.trace_id for c in chunks}
    assert len(trace_ids) == 1

    # the gateway still asked upstream for usage, so the stream's cost is known
    assert fake_openai.requests[0]["json"]["stream_options"] == {"include_usage": True}
    (span,) = recorded(gw, trace_ids.pop())["spans"]
    assert span["attributes"]["stream"] is True
    assert (span["input_tokens"], span["output_tokens"]) == (11, 7)
    assert span["cost_usd"] == pytest.approx(expected_cost(fake_openai))
    assert span["ttft_ms"] is not None
    assert span["output"]["choices"][0]["message"]["content"] == "one two three four"


def test_sync_stream_with_usage(gw: Gateway) -> None:
    chunks = list(gw.chat(model="chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 11
    assert chunks[-1].choices == []


def test_sync_stream_abandoned_early_is_recorded(gw: Gateway, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_text = " ".join(f"w{i}" for i in range(50))
    fake_openai.chunk_delay = 0.05  # the upstream is still streaming when the caller stops
    it = gw.chat(model="chat", messages=MESSAGES, stream=True)
    first = next(it)
    it.close()  # the caller stops reading: the upstream call is cancelled and the span recorded
    span = recorded(gw, first.trace_id)["spans"][0]
    assert span["status"] == "error"
    assert span["attributes"]["http_status"] == 499
    assert fake_openai.wait_for_disconnect(timeout=10)


# ---- async --------------------------------------------------------------------------


async def test_async_chat(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    async with Gateway(config(tmp_path, fake_openai)) as gw:
        resp = await gw.achat(model="chat", messages=MESSAGES)
        assert isinstance(resp, ChatCompletion)
        assert resp.choices[0].message.content == fake_openai.reply_text
        span = recorded(gw, resp.trace_id)["spans"][0]
        assert span["status"] == "ok"
        assert span["cost_usd"] == pytest.approx(expected_cost(fake_openai))


async def test_async_stream(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_text = "streamed from the fake"
    async with Gateway(config(tmp_path, fake_openai)) as gw:
        stream = await gw.achat(model="chat", messages=MESSAGES, stream=True)
        chunks = [c async for c in stream]
        assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed from the fake"
        span = recorded(gw, chunks[0].trace_id)["spans"][0]
        assert span["status"] == "ok" and span["output_tokens"] == 7


async def test_async_stream_aclose_cancels_and_records(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_text = " ".join(f"w{i}" for i in range(50))
    fake_openai.chunk_delay = 0.05
    async with Gateway(config(tmp_path, fake_openai)) as gw:
        stream = await gw.achat(model="chat", messages=MESSAGES, stream=True)
        first = await stream.__anext__()
        await stream.aclose()
        # aclose() itself must end the call: the span is recorded by the time it returns
        span = recorded(gw, first.trace_id)["spans"][0]
        assert span["status"] == "error"
        assert span["attributes"]["http_status"] == 499
        assert span["output"]["id"] == first.id  # the partial output is kept


async def test_async_trace_id_and_parent_are_used(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    trace_id, parent = "ab" * 16, "cd" * 8
    async with Gateway(config(tmp_path, fake_openai)) as gw:
        resp = await gw.achat(model="chat", messages=MESSAGES, trace_id=trace_id, parent_span_id=parent)
        assert resp.trace_id == trace_id
        span = recorded(gw, trace_id)["spans"][0]
        assert span["parent_id"] == parent


# ---- routing through the library ----------------------------------------------------


def test_fallback_across_upstreams(tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_2: FakeOpenAI) -> None:
    fake_openai.fail_next(Fault("status", status=500), times=2)
    fake_openai_2.reply_text = "from the second upstream"
    with Gateway(config(tmp_path, fake_openai, fake_openai_2, retries=1)) as gw:
        resp = gw.chat(model="chat", messages=MESSAGES)
        assert resp.choices[0].message.content == "from the second upstream"
        assert len(fake_openai.requests) == 2  # first try + one retry
        assert len(fake_openai_2.requests) == 1
        span = recorded(gw, resp.trace_id)["spans"][0]
        assert span["provider"] == "up1"
        assert [(a["provider"], a["outcome"]) for a in span["attributes"]["attempts"]] == [
            ("up0", "http_500"), ("up0", "http_500"), ("up1", "ok")]
        assert span["attributes"]["fallbacks"] == 1
        assert span["cost_usd"] == pytest.approx(expected_cost(fake_openai_2))


def test_stream_fallback_before_first_chunk(tmp_path: Path, fake_openai: FakeOpenAI,
                                            fake_openai_2: FakeOpenAI) -> None:
    fake_openai.fail_next(Fault("status", status=503))
    fake_openai_2.reply_text = "second"
    with Gateway(config(tmp_path, fake_openai, fake_openai_2, retries=0)) as gw:
        chunks = list(gw.chat(model="chat", messages=MESSAGES, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "second"


def test_all_targets_failing_raises_and_is_recorded(tmp_path: Path, fake_openai: FakeOpenAI,
                                                    fake_openai_2: FakeOpenAI) -> None:
    fake_openai.fail_next(Fault("status", status=500))
    fake_openai_2.fail_next(Fault("status", status=503))
    with Gateway(config(tmp_path, fake_openai, fake_openai_2, retries=0)) as gw:
        with pytest.raises(GatewayError) as ei:
            gw.chat(model="chat", messages=MESSAGES)
        assert ei.value.status == 502
        assert "up0/gpt-4o-mini" in ei.value.message and "up1/gpt-4o-mini" in ei.value.message
        assert gw.engine.recorder.flush()
        rows, _ = gw.engine.store.list_traces(TraceFilter())
        (row,) = rows
        assert row["status"] == "error"
        assert row["cost_usd"] is None


# ---- errors ---------------------------------------------------------------------------


def test_unknown_alias_is_not_found(gw: Gateway, fake_openai: FakeOpenAI) -> None:
    with pytest.raises(NotFound) as ei:
        gw.chat(model="gpt-5-nope", messages=MESSAGES)
    assert ei.value.status == 404
    assert ei.value.param == "model"
    assert "gpt-5-nope" in ei.value.message and "chat" in ei.value.message  # lists what exists
    assert fake_openai.requests == []


@pytest.mark.parametrize(("params", "param"), [
    ({"temperature": 5}, "temperature"),
    ({"n": 0}, "n"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_invalid_params_raise_invalid_request(gw: Gateway, fake_openai: FakeOpenAI,
                                              params: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        gw.chat(model="chat", messages=MESSAGES, **params)
    assert ei.value.param == param
    assert f"'{param}'" in str(ei.value)
    assert fake_openai.requests == []


async def test_async_invalid_message(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    async with Gateway(config(tmp_path, fake_openai)) as gw:
        with pytest.raises(InvalidRequest) as ei:
            await gw.achat(model="chat", messages=[{"role": "wizard", "content": "x"}])
        assert ei.value.param == "messages[0].role"


# ---- lifecycle --------------------------------------------------------------------------


def test_context_manager_closes_cleanly(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    before = {t.name for t in threading.enumerate()}
    with Gateway(config(tmp_path, fake_openai)) as gw:
        trace_ids = [gw.chat(model="chat", messages=MESSAGES).trace_id for _ in range(3)]
        loop_thread = gw._loop_thread.thread
        recorder_thread = gw.engine.recorder._thread
        assert loop_thread.is_alive() and recorder_thread.is_alive()
    # no flush() was called: close() must have written everything
    assert not loop_thread.is_alive()
    assert not recorder_thread.is_alive()
    assert not gw.engine.store.ping()  # the store connection is closed
    assert {t.name for t in threading.enumerate()} - before == set()
    store = SQLiteStore(f"sqlite:///{tmp_path}/lib.db")
    try:
        for tid in trace_ids:
            assert store.get_trace(tid)["status"] == "ok"
    finally:
        store.close()


def test_context_manager_without_calls(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    with Gateway(config(tmp_path, fake_openai)) as gw:
        assert gw.config.models["chat"].targets[0].provider == "up0"
    assert not gw.engine.store.ping()


def test_gateway_from_yaml_path(tmp_path: Path, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_URL", fake_openai.base_url)
    path = tmp_path / "cfg.yaml"
    path.write_text(f"""
store: sqlite:///{tmp_path}/yaml.db
providers:
  primary: {{type: openai, base_url: "${{FAKE_URL}}", api_key: sk-x}}
models:
  chat:
    targets: [{{provider: primary, model: gpt-4o-mini}}]
""")
    with Gateway(str(path)) as gw:
        assert gw.chat(model="chat", messages=MESSAGES).choices[0].message.content == fake_openai.reply_text
