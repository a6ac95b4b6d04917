"""Application spans: ``@shipyard.observe`` around a RAG-like app, with the gateway's llm
spans joining the app's trace — in-process (library, sync and async) and over HTTP
(``shipyard serve`` + the openai SDK with a traced httpx client, sharing one store)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import client_for, fast_alias
from fakes import FakeOpenAI, Fault

import shipyard
from shipyard import Gateway, observe
from shipyard.store import TraceFilter
from shipyard.tracing import observe as obs_mod
from shipyard.tracing.context import format_traceparent

DOCS = [{"id": "doc-1", "text": "Shipyard records every call."},
        {"id": "doc-2", "text": "Traces join by id."}]


def lib_config(tmp_path: Path, up: FakeOpenAI, **alias_kw: Any) -> dict[str, Any]:
    return {
        "store": f"sqlite:///{tmp_path}/lib.db",
        "providers": {"up0": {"type": "openai", "base_url": up.base_url, "api_key": "sk-test-0"}},
        "models": {"chat": fast_alias({"provider": "up0", "model": "gpt-4o-mini"}, **alias_kw)},
        "prices": {"gpt-4o-mini": {"input": 0.15, "output": 0.60}},
    }


@pytest.fixture(autouse=True)
def isolated_sinks():
    """Each test starts with no observe sink; Gateways created here register themselves."""
    sinks = obs_mod._sinks
    saved = (sinks.defaults, sinks.explicit, sinks.explicit_store, sinks.warned)
    sinks.defaults, sinks.explicit, sinks.explicit_store, sinks.warned = [], None, None, False
    yield
    shipyard.configure(None)  # closes a sink a test configured
    sinks.defaults, sinks.explicit, sinks.explicit_store, sinks.warned = saved


@pytest.fixture
def gw(tmp_path: Path, fake_openai: FakeOpenAI):
    g = Gateway(lib_config(tmp_path, fake_openai))
    yield g
    g.close()


def trace_of(gw: Gateway, trace_id: str) -> dict[str, Any]:
    assert observe.flush() and gw.engine.recorder.flush()
    trace = gw.engine.store.get_trace(trace_id)
    assert trace is not None, f"trace {trace_id} was not recorded"
    return trace


def by_name(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in trace["spans"]}


def assert_rag_trace(trace: dict[str, Any], root: str, *, session: str, user: str) -> None:
    spans = by_name(trace)
    assert len(trace["spans"]) == 3 and set(spans) == {root, "search", "chat chat"}
    app, search, llm = spans[root], spans["search"], spans["chat chat"]
    # parent links: app is the root; retrieval and the gateway call are its children
    assert app["parent_id"] is None
    assert search["parent_id"] == app["span_id"] and llm["parent_id"] == app["span_id"]
    assert {s["trace_id"] for s in trace["spans"]} == {trace["trace_id"]}
    assert (app["kind"], search["kind"], llm["kind"]) == ("chain", "retrieval", "llm")
    # inputs bound by name, outputs, timing
    assert app["input"] == {"question": "what does shipyard do?"}
    assert app["output"] == "Hello from fake-openai"
    assert search["input"] == {"query": "what does shipyard do?", "k": 2}
    assert search["output"] == DOCS
    assert search["attributes"]["retrieved_document_ids"] == ["doc-1", "doc-2"]
    for s in trace["spans"]:
        assert s["status"] == "ok" and s["duration_ms"] is not None and s["duration_ms"] >= 0
    assert app["start_time"] <= search["start_time"] <= llm["start_time"] <= app["end_time"]
    # the llm span's lineage: alias -> provider/model, exact version, config, documents used
    assert (llm["alias"], llm["provider"], llm["model"]) == ("chat", "up0", "gpt-4o-mini")
    assert llm["response_model"] and llm["completion_id"]
    assert (llm["input_tokens"], llm["output_tokens"]) == (11, 7)
    assert llm["attributes"]["config_hash"]
    assert llm["attributes"]["retrieved_document_ids"] == ["doc-1", "doc-2"]
    # session and user flow from the app's step to every child (the request had none)
    assert {(s["session_id"], s["user_id"]) for s in trace["spans"]} == {(session, user)}
    assert trace["name"] == root and trace["span_count"] == 3
    assert (trace["session_id"], trace["user_id"]) == (session, user)


# ---- in-process: library, sync and async ----------------------------------------------------


def test_rag_app_sync_library(gw: Gateway) -> None:
    @observe(kind="retrieval", name="search")
    def retrieve(query: str, k: int = 3) -> list[dict[str, str]]:
        return DOCS[:k]

    @observe(kind="chain", session_id="sess-1", user_id="alice")
    def answer(question: str) -> str:
        docs = retrieve(question, k=2)
        context = "\n".join(d["text"] for d in docs)
        resp = gw.chat(model="chat", messages=[{"role": "system", "content": context},
                                               {"role": "user", "content": question}])
        assert resp.trace_id == observe.current_span().trace_id
        return resp.choices[0].message.content

    assert observe.current_span() is None
    assert answer("what does shipyard do?") == "Hello from fake-openai"
    assert observe.current_span() is None  # the contextvar is reset after the call
    assert observe.flush() and gw.engine.recorder.flush()
    (t,), _ = gw.engine.store.list_traces(TraceFilter(session_id="sess-1"))
    assert_rag_trace(trace_of(gw, t["trace_id"]), "answer", session="sess-1", user="alice")


async def test_rag_app_async_library(gw: Gateway) -> None:
    @observe(kind="retrieval", name="search")
    async def retrieve(query: str, k: int = 3) -> list[dict[str, str]]:
        await asyncio.sleep(0)
        return DOCS[:k]

    @observe(kind="chain")
    async def answer(question: str) -> str:
        docs = await retrieve(question, k=2)
        resp = await gw.achat(model="chat", messages=[{"role": "system", "content": docs[0]["text"]},
                                                      {"role": "user", "content": question}])
        return resp.choices[0].message.content

    with observe("request", session_id="sess-2", user_id="bob") as req:
        assert await answer("what does shipyard do?") == "Hello from fake-openai"
    trace = trace_of(gw, req.trace_id)
    spans = by_name(trace)
    assert spans["request"]["parent_id"] is None and spans["answer"]["parent_id"] == req.span_id
    # the request step is an extra root around the RAG shape
    app = spans["answer"]
    assert spans["search"]["parent_id"] == app["span_id"] and spans["chat chat"]["parent_id"] == app["span_id"]
    assert spans["chat chat"]["attributes"]["retrieved_document_ids"] == ["doc-1", "doc-2"]
    assert {(s["session_id"], s["user_id"]) for s in trace["spans"]} == {("sess-2", "bob")}
    assert len(trace["spans"]) == 4


async def test_async_three_span_trace_and_concurrent_children(gw: Gateway) -> None:
    @observe(kind="retrieval", name="search")
    async def retrieve(query: str, k: int = 3) -> list[dict[str, str]]:
        return DOCS[:k]

    @observe(kind="chain", name="rag", session_id="sess-3", user_id="carol")
    async def rag(question: str) -> str:
        docs = await retrieve(query=question, k=2)
        resp = await gw.achat(model="chat", messages=[{"role": "user", "content": docs[1]["text"]}])
        return resp.choices[0].message.content

    @observe(kind="chain", name="fanout")
    async def fanout() -> list[str]:
        return list(await asyncio.gather(*(retrieve(f"q{i}", k=1) for i in range(3))))

    # plain decorated call: exactly three spans
    await rag("what does shipyard do?")
    assert observe.flush() and gw.engine.recorder.flush()
    traces, _ = gw.engine.store.list_traces(TraceFilter(session_id="sess-3"))
    (t,) = traces
    assert_rag_trace(trace_of(gw, t["trace_id"]), "rag", session="sess-3", user="carol")

    # asyncio.gather copies the context: three sibling children of the fan-out step
    with observe("batch") as batch:
        await fanout()
    trace = trace_of(gw, batch.trace_id)
    spans = trace["spans"]
    fan = next(s for s in spans if s["name"] == "fanout")
    kids = [s for s in spans if s["name"] == "search"]
    assert len(kids) == 3 and {k["parent_id"] for k in kids} == {fan["span_id"]}
    assert sorted(k["input"]["query"] for k in kids) == ["q0", "q1", "q2"]


# ---- over HTTP: shipyard serve + the openai SDK, one shared store ----------------------------


def server_config(up: FakeOpenAI) -> dict[str, Any]:
    return {
        "providers": {"primary": {"type": "openai", "base_url": up.base_url, "api_key": "sk-test-secret"}},
        "models": {"chat": fast_alias({"provider": "primary", "model": "gpt-4o-mini"})},
    }


def test_rag_app_over_http_joins_the_servers_trace(serve, fake_openai: FakeOpenAI) -> None:
    server = serve(server_config(fake_openai))
    shipyard.configure(store=f"sqlite:///{server.engine.store.path}")
    client = client_for(server, http_client=shipyard.traced_http_client())

    @observe(kind="retrieval", name="search")
    def retrieve(query: str, k: int = 3) -> list[dict[str, str]]:
        return DOCS[:k]

    @observe(kind="chain", session_id="sess-http", user_id="dave")
    def answer(question: str) -> tuple[str, str]:
        docs = retrieve(question, k=2)
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "system", "content": docs[0]["text"]},
                                    {"role": "user", "content": question}],
            user="dave", metadata={"session_id": "sess-http"},
        )
        return raw.parse().choices[0].message.content, raw.headers["x-shipyard-trace-id"]

    with observe("ignored-outer-probe"):
        pass  # a separate trace; recorded into the configured store too
    text, header_trace = answer("what does shipyard do?")
    assert text == "Hello from fake-openai"
    assert observe.flush()
    server.flush()
    trace = server.engine.store.get_trace(header_trace)
    assert trace is not None
    spans = by_name(trace)
    assert set(spans) == {"answer", "search", "chat chat"}
    app, search, llm = spans["answer"], spans["search"], spans["chat chat"]
    assert app["parent_id"] is None
    assert search["parent_id"] == app["span_id"] and llm["parent_id"] == app["span_id"]
    assert search["attributes"]["retrieved_document_ids"] == ["doc-1", "doc-2"]
    assert (llm["alias"], llm["provider"], llm["model"]) == ("chat", "primary", "gpt-4o-mini")
    assert llm["attributes"]["config_hash"] == server.engine.config_hash
    assert trace["span_count"] == 3 and trace["name"] == "answer"
    assert (trace["session_id"], trace["user_id"]) == ("sess-http", "dave")
    # the upstream saw no traceparent: it is for the gateway only
    assert "traceparent" not in fake_openai.requests[-1]["headers"]


async def test_async_openai_client_and_trace_headers(serve, fake_openai: FakeOpenAI) -> None:
    server = serve(server_config(fake_openai))
    shipyard.configure(store=f"sqlite:///{server.engine.store.path}")
    aclient = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0,
                                 http_client=shipyard.traced_async_http_client())
    plain = client_for(server)

    @observe(kind="tool", name="lookup")
    async def lookup() -> str:
        r = await aclient.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a"}])
        return r.choices[0].message.content

    @observe(kind="chain", name="flow")
    async def flow() -> None:
        await lookup()
        # explicit propagation with the plain SDK client (sync call from async code is fine here)
        assert shipyard.trace_headers() == {"traceparent": observe.current_span().traceparent}
        plain.chat.completions.create(model="chat", messages=[{"role": "user", "content": "b"}],
                                      extra_headers=shipyard.trace_headers())

    with observe("outer") as outer:
        await flow()
    await aclient.close()
    plain.close()
    assert shipyard.trace_headers() == {}
    assert observe.flush()
    server.flush()
    trace = server.engine.store.get_trace(outer.trace_id)
    spans = trace["spans"]
    assert len(spans) == 5
    ids = {s["name"]: s["span_id"] for s in spans if s["kind"] != "llm"}
    llms = [s for s in spans if s["kind"] == "llm"]
    assert sorted(s["parent_id"] for s in llms) == sorted([ids["lookup"], ids["flow"]])


# ---- errors -----------------------------------------------------------------------------------


def test_errors_are_recorded_and_reraised(gw: Gateway, fake_openai: FakeOpenAI) -> None:
    @observe(kind="tool")
    def broken(x: int) -> int:
        raise ValueError(f"bad value {x}")

    @observe(kind="chain", name="caller")
    def caller() -> None:
        try:
            broken(3)
        except ValueError:
            pass
        raise KeyError("missing")

    with pytest.raises(KeyError):
        caller()
    with observe("holder") as h, pytest.raises(ValueError, match="bad value 7"):
        broken(7)
    assert observe.flush()
    traces, _ = gw.engine.store.list_traces(TraceFilter(status="error"))
    caller_trace = gw.engine.store.get_trace(next(t["trace_id"] for t in traces if t["name"] == "caller"))
    spans = by_name(caller_trace)
    assert spans["broken"]["status"] == "error" and spans["broken"]["error"] == "ValueError: bad value 3"
    assert spans["broken"]["attributes"]["exception_type"] == "builtins.ValueError"
    assert spans["broken"]["input"] == {"x": 3} and spans["broken"]["output"] is None
    assert spans["caller"]["status"] == "error" and spans["caller"]["error"] == "KeyError: 'missing'"
    assert caller_trace["status"] == "error"
    holder = trace_of(gw, h.trace_id)
    assert by_name(holder)["holder"]["status"] == "ok"  # caught inside: the holder itself is fine
    assert by_name(holder)["broken"]["status"] == "error"


async def test_async_error_and_gateway_failure_inside_a_step(gw: Gateway, fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(Fault("status", status=400))  # not retried: the request is at fault

    @observe(kind="chain", name="ask")
    async def ask() -> Any:
        return await gw.achat(model="chat", messages=[{"role": "user", "content": "x"}])

    with observe("req") as req, pytest.raises(shipyard.GatewayError):
        await ask()
    trace = trace_of(gw, req.trace_id)
    spans = by_name(trace)
    assert spans["ask"]["status"] == "error" and spans["ask"]["error"].startswith(
        spans["ask"]["attributes"]["exception_type"].rsplit(".", 1)[-1])
    assert spans["chat chat"]["status"] == "error"
    assert spans["chat chat"]["parent_id"] == spans["ask"]["span_id"]

    @observe
    async def cancelled() -> None:
        await asyncio.sleep(10)

    with observe("holder") as holder:
        task = asyncio.create_task(cancelled())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert by_name(trace_of(gw, holder.trace_id))["cancelled"]["error"] == "cancelled"


# ---- generators ---------------------------------------------------------------------------------


def test_sync_generator_step(gw: Gateway) -> None:
    @observe(kind="tool")
    def lookup(i: int) -> str:
        return f"r{i}"

    @observe(kind="chain", name="stream")
    def stream(n: int):
        for i in range(n):
            yield lookup(i)  # children of the generator's span, not of the consumer's
        return "done"

    @observe(kind="llm", name="tokens")
    def tokens():
        yield "Hel"
        yield "lo"

    with observe("consumer") as consumer:
        assert list(stream(3)) == ["r0", "r1", "r2"]
        assert observe.current_span() is consumer
        assert "".join(tokens()) == "Hello"
        gen = stream(10)
        assert next(gen) == "r0"
        gen.close()  # stopped early
    trace = trace_of(gw, consumer.trace_id)
    streams = [s for s in trace["spans"] if s["name"] == "stream"]
    full = next(s for s in streams if s["attributes"]["yielded"] == 3)
    early = next(s for s in streams if s["attributes"]["yielded"] == 1)
    assert full["output"] == "r0r1r2" and full["input"] == {"n": 3}
    assert early["attributes"]["stopped_early"] is True and early["status"] == "ok"
    lookups = [s for s in trace["spans"] if s["name"] == "lookup"]
    assert len(lookups) == 4
    assert sum(1 for s in lookups if s["parent_id"] == full["span_id"]) == 3
    assert by_name(trace)["tokens"]["output"] == "Hello"
    assert {s["parent_id"] for s in streams} == {consumer.span_id}


async def test_async_generator_step_with_a_gateway_call(gw: Gateway) -> None:
    @observe(kind="chain", name="agen")
    async def agen(n: int):
        for i in range(n):
            resp = await gw.achat(model="chat", messages=[{"role": "user", "content": str(i)}])
            yield {"i": i, "text": resp.choices[0].message.content}

    @observe(kind="chain", name="failing")
    async def failing():
        yield 1
        raise RuntimeError("boom")

    with observe("consumer") as consumer:
        items = [x async for x in agen(2)]
        assert observe.current_span() is consumer
        with pytest.raises(RuntimeError, match="boom"):
            async for _ in failing():
                pass
    assert [x["i"] for x in items] == [0, 1]
    trace = trace_of(gw, consumer.trace_id)
    spans = trace["spans"]
    g = next(s for s in spans if s["name"] == "agen")
    llms = [s for s in spans if s["kind"] == "llm"]
    assert len(llms) == 2 and {s["parent_id"] for s in llms} == {g["span_id"]}
    assert g["output"] == items and g["attributes"]["yielded"] == 2
    f = next(s for s in spans if s["name"] == "failing")
    assert f["status"] == "error" and f["error"] == "RuntimeError: boom"


# ---- context manager form, attributes, immutability -------------------------------------------


def test_context_manager_attributes_output_and_immutability(gw: Gateway, caplog) -> None:
    with observe("pipeline", kind="chain", attributes={"feature": "faq"}) as root:
        assert observe.current_span() is root
        with observe("search", kind="retrieval") as r:
            r.set_retrieved_documents([{"id": "a"}, {"doc_id": 7}, "c"])
            r.set_attribute("index", "faq-v2").set_attribute("api_key", "sk-secret")
            r.set_input({"query": "q"})
        with observe(kind="guard", name="pii") as g:
            g.set_output({"passed": True})
            g.update(user_id="u-late")
        root.set_output("final")
        resp = gw.chat(model="chat", messages=[{"role": "user", "content": "x"}])
    assert observe.current_span() is None
    assert root.recorded
    with caplog.at_level(logging.WARNING, logger="shipyard.observe"):
        root.set_attribute("late", 1)  # ignored: recorded spans are immutable
    assert "immutable" in caplog.text
    trace = trace_of(gw, root.trace_id)
    assert resp.trace_id == root.trace_id
    spans = by_name(trace)
    assert spans["pipeline"]["output"] == "final" and "late" not in spans["pipeline"]["attributes"]
    assert spans["pipeline"]["attributes"]["feature"] == "faq"
    search = spans["search"]
    assert search["attributes"]["retrieved_document_ids"] == ["a", "7", "c"]
    assert search["attributes"]["index"] == "faq-v2" and search["attributes"]["api_key"] == "[REDACTED]"
    assert search["input"] == {"query": "q"}
    assert spans["pii"]["kind"] == "guard" and spans["pii"]["output"] == {"passed": True}
    assert spans["pii"]["user_id"] == "u-late"
    # a sibling's documents are part of the llm call's lineage
    assert spans["chat chat"]["attributes"]["retrieved_document_ids"] == ["a", "7", "c"]
    assert spans["chat chat"]["parent_id"] == root.span_id


async def test_async_context_manager(gw: Gateway) -> None:
    async with observe("step", kind="tool") as s:
        s.set_attribute("n", 1)
        await asyncio.sleep(0)
        assert observe.current_span() is s
    assert observe.current_span() is None
    assert by_name(trace_of(gw, s.trace_id))["step"]["attributes"]["n"] == 1


def test_inputs_are_json_safe_and_copied(gw: Gateway) -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<Thing>"

    class Service:
        @observe(kind="tool")
        def run(self, thing: Any, *rest: Any, password: str = "", **opts: Any) -> dict[str, Any]:
            return {"items": [1, 2], "thing": thing}

    with observe("holder") as h:
        out = Service().run(Thing(), 1, 2, password="hunter2", depth=3, big=2**70, raw=b"abc")
        out["items"].append(3)  # mutating after return does not change the recorded output
    span = by_name(trace_of(gw, h.trace_id))["Service.run"]
    assert span["input"] == {"thing": "<Thing>", "rest": [1, 2], "password": "[REDACTED]", "depth": 3,
                             "big": str(2**70), "raw": "<bytes: 3 bytes>"}
    assert span["output"] == {"items": [1, 2], "thing": "<Thing>"}


def test_capture_flags_and_validation(gw: Gateway) -> None:
    @observe(kind="tool", capture_input=False, capture_output=False)
    def secretive(x: str) -> str:
        return x * 2

    with observe("holder") as h:
        assert secretive("s") == "ss"
    span = by_name(trace_of(gw, h.trace_id))["secretive"]
    assert span["input"] is None and span["output"] is None
    with pytest.raises(ValueError, match="unknown kind"):
        observe(kind="agent")


# ---- threads ----------------------------------------------------------------------------------


def test_threads_with_copied_context_are_children(gw: Gateway) -> None:
    @observe(kind="tool")
    def work(i: int) -> int:
        # a gateway call from a worker thread joins the trace too
        gw.chat(model="chat", messages=[{"role": "user", "content": str(i)}])
        return i * i

    @observe(kind="chain", name="parallel", session_id="s-thr")
    def parallel() -> list[int]:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(contextvars.copy_context().run, work, i) for i in range(3)]
            return [f.result() for f in futures]

    with observe("holder") as h:
        assert parallel() == [0, 1, 4]
        orphan: list[Any] = []
        t = threading.Thread(target=lambda: orphan.append(observe.current_span()))
        t.start()
        t.join()
        assert orphan == [None]  # a plain thread starts with an empty context
    trace = trace_of(gw, h.trace_id)
    spans = trace["spans"]
    par = next(s for s in spans if s["name"] == "parallel")
    works = [s for s in spans if s["name"] == "work"]
    assert len(works) == 3 and {w["parent_id"] for w in works} == {par["span_id"]}
    llms = [s for s in spans if s["kind"] == "llm"]
    assert len(llms) == 3 and {s["parent_id"] for s in llms} == {w["span_id"] for w in works}
    assert {s["session_id"] for s in llms} == {"s-thr"}


# ---- trace context in and out -----------------------------------------------------------------


def test_incoming_traceparent_continues_the_callers_trace(gw: Gateway) -> None:
    caller_trace, caller_span = "ab" * 16, "cd" * 8
    with observe("handler", traceparent=format_traceparent(caller_trace, caller_span)) as s:
        assert shipyard.trace_headers() == {"traceparent": f"00-{caller_trace}-{s.span_id}-01"}
    assert (s.trace_id, s.parent_id) == (caller_trace, caller_span)
    with observe("bad", traceparent="garbage") as bad:
        pass
    assert bad.trace_id != caller_trace and bad.parent_id is None
    assert by_name(trace_of(gw, caller_trace))["handler"]["parent_id"] == caller_span


def test_traced_http_client_injects_only_inside_a_step() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("traceparent"))
        return httpx.Response(200, json={})

    client = shipyard.traced_http_client(transport=httpx.MockTransport(handler))
    client.get("http://x/")
    with observe("step") as s:
        client.get("http://x/")
        client.get("http://x/", headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    assert seen == [None, s.traceparent, "00-" + "1" * 32 + "-" + "2" * 16 + "-01"]


# ---- sinks -------------------------------------------------------------------------------------


def test_no_sink_does_not_crash_and_warns_once(caplog) -> None:
    @observe
    def f(x: int) -> int:
        return x + 1

    with caplog.at_level(logging.WARNING, logger="shipyard.observe"):
        assert f(1) == 2
        with observe("again"):
            assert f(2) == 3
    warnings = [r for r in caplog.records if r.name == "shipyard.observe"]
    assert len(warnings) == 1 and "discarded" in warnings[0].getMessage()


def test_most_recent_live_gateway_records(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    first = Gateway(lib_config(tmp_path / "a", fake_openai))
    second = Gateway(lib_config(tmp_path / "b", fake_openai))
    try:
        with observe("to-second") as s1:
            pass
        second.close()
        with observe("to-first") as s2:
            pass
        assert observe.flush()
        assert first.engine.store.get_trace(s2.trace_id) is not None
        assert first.engine.store.get_trace(s1.trace_id) is None
    finally:
        first.close()
        second.close()
    s = Gateway(lib_config(tmp_path / "c", fake_openai), store=None)  # recording off: not a sink
    try:
        assert obs_mod._sinks.current() is None
    finally:
        s.close()


def test_nothing_observed_leaves_engine_spans_unchanged(gw: Gateway) -> None:
    span = gw.engine.new_span("llm", "chat chat", user="u")
    assert span.parent_id is None and span.session_id is None and span.user_id == "u"
    assert span.attributes == {"config_hash": gw.engine.config_hash}
    resp = gw.chat(model="chat", messages=[{"role": "user", "content": "x"}])
    (only,) = trace_of(gw, resp.trace_id)["spans"]
    assert only["parent_id"] is None and "retrieved_document_ids" not in only["attributes"]
