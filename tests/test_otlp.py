"""OTLP: export to a real loopback collector, and ingestion on POST /v1/traces."""

from __future__ import annotations

import gzip
import json
import threading
import time

import httpx
import openai
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from conftest import client_for, fast_alias
from fakes import Fault, FakeServer
from shipyard.config import OtlpConfig
from shipyard.tracing.otlp_export import OtlpExporter, traces_url
from shipyard.tracing.span import Span, new_span_id, new_trace_id

MODEL = "gpt-4o-mini-2024-07-18"
PRICES = {MODEL: {"input": 0.15, "output": 0.60}}
MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


# ---- a real OTLP/HTTP collector on loopback ---------------------------------------------

class FakeCollector(FakeServer):
    """Accepts OTLP/HTTP protobuf on /v1/traces and keeps every decoded request."""

    def __init__(self) -> None:
        super().__init__()
        self.exports: list[ExportTraceServiceRequest] = []
        self._got = threading.Condition(self._lock)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/traces", self._traces)

    def error_payload(self, status: int, message: str | None = None) -> dict:
        return {"code": status, "message": message or "injected fault"}

    async def _traces(self, request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest.FromString(await request.read())
        with self._got:
            self.exports.append(req)
            self._got.notify_all()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def spans(self) -> list[tuple[dict, trace_pb2.Span]]:
        with self._lock:
            return [({kv.key: _value(kv.value) for kv in rs.resource.attributes}, sp)
                    for req in self.exports for rs in req.resource_spans
                    for ss in rs.scope_spans for sp in ss.spans]

    def wait_for_spans(self, n: int, timeout: float = 10.0) -> list[tuple[dict, trace_pb2.Span]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.spans()
            if len(found) >= n:
                return found
            time.sleep(0.02)
        raise AssertionError(f"collector received {len(self.spans())} spans, expected {n}")


def _value(v: AnyValue):
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


def attrs_of(span: trace_pb2.Span) -> dict:
    return {kv.key: _value(kv.value) for kv in span.attributes}


@pytest.fixture
def collector():
    with FakeCollector() as c:
        yield c


def gateway_config(up, collector=None, **otlp):
    cfg = {
        "providers": {"primary": {"type": "openai", "base_url": up.base_url, "api_key": "sk-test-secret-123"}},
        "models": {"chat": fast_alias({"provider": "primary", "model": MODEL})},
        "prices": PRICES,
    }
    if collector is not None:
        cfg["otlp"] = {"endpoint": collector.url, "headers": {"x-collector-key": "k-1"}, **otlp}
    return cfg


def export_now(server) -> None:
    server.flush()
    assert server.engine.otlp_exporter.flush(10)


# ---- export -------------------------------------------------------------------------------

def test_chat_call_is_exported_with_genai_attributes(serve, fake_openai, collector):
    fake_openai.reply_text = "Hello there"
    fake_openai.usage = (1000, 500)
    server = serve(gateway_config(fake_openai, collector))
    raw = client_for(server).chat.completions.with_raw_response.create(
        model="chat", messages=MSG, temperature=0.2, top_p=0.9, seed=7, max_tokens=64, user="u-42",
        metadata={"session_id": "s-1"},
    )
    resp = raw.parse()
    trace_id = raw.headers["x-shipyard-trace-id"]
    export_now(server)

    ((resource, span),) = collector.wait_for_spans(1)
    sent = collector.requests[-1]
    assert sent["headers"]["content-type"] == "application/x-protobuf"
    assert sent["headers"]["x-collector-key"] == "k-1"
    assert resource["service.name"] == "shipyard"
    assert span.trace_id.hex() == trace_id
    assert span.name == f"chat {MODEL}"
    assert span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert span.status.code == trace_pb2.Status.STATUS_CODE_UNSET
    assert span.end_time_unix_nano > span.start_time_unix_nano
    a = attrs_of(span)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.system"] == "openai"
    assert a["shipyard.provider"] == "primary" and a["shipyard.alias"] == "chat"
    assert a["gen_ai.request.model"] == MODEL and a["gen_ai.response.model"] == MODEL
    assert a["gen_ai.response.id"] == resp.id
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (1000, 500)
    assert a["gen_ai.request.temperature"] == pytest.approx(0.2)
    assert a["gen_ai.request.top_p"] == pytest.approx(0.9)
    assert (a["gen_ai.request.seed"], a["gen_ai.request.max_tokens"]) == (7, 64)
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["user.id"] == "u-42" and a["session.id"] == "s-1"
    assert a["shipyard.cost_usd"] == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert [x["outcome"] for x in json.loads(a["shipyard.attempts"])] == ["ok"]
    assert json.loads(a["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Say hello"}]},
    ]
    assert json.loads(a["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Hello there"}], "finish_reason": "stop"}]
    assert "error.type" not in a
    assert server.engine.otlp_exporter.stats()["exported"] == 1


def test_failed_call_is_exported_as_error(serve, fake_openai, collector):
    fake_openai.fail_next(Fault("status", status=500), times=10)
    server = serve(gateway_config(fake_openai, collector))
    with pytest.raises(openai.APIStatusError):
        client_for(server).chat.completions.create(model="chat", messages=MSG)
    export_now(server)
    ((_, span),) = collector.wait_for_spans(1)
    a = attrs_of(span)
    assert span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert "All targets for model 'chat' failed" in span.status.message
    assert a["error.type"] == "http_500"
    assert len(json.loads(a["shipyard.attempts"])) == 3  # 1 try + 2 retries
    assert span.name == "chat chat"  # no target answered: the gateway's own span name


def test_streamed_anthropic_call_maps_provider_type_and_ttft(serve, fake_anthropic, collector):
    cfg = {
        "providers": {"claude": {"type": "anthropic", "base_url": fake_anthropic.url, "api_key": "sk-ant"}},
        "models": {"chat": fast_alias({"provider": "claude", "model": "claude-3-5-haiku-20241022"})},
        "otlp": {"endpoint": collector.url + "/v1/traces"},  # a full URL is used as is
    }
    server = serve(cfg)
    stream = client_for(server).chat.completions.create(model="chat", messages=MSG, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    export_now(server)
    ((_, span),) = collector.wait_for_spans(1)
    a = attrs_of(span)
    assert a["gen_ai.provider.name"] == "anthropic" and a["gen_ai.system"] == "anthropic"
    assert a["shipyard.provider"] == "claude"
    assert a["shipyard.ttft_ms"] > 0 and a["shipyard.stream"] is True
    assert collector.requests[-1]["path"] == "/v1/traces"


def test_capture_content_off_and_redaction(serve, fake_openai, collector):
    fake_openai.reply_text = "your key is sk-live-abcdef"
    server = serve(gateway_config(fake_openai, collector, capture_content=False))
    client_for(server).chat.completions.create(model="chat", messages=MSG)
    export_now(server)
    ((_, span),) = collector.wait_for_spans(1)
    assert "gen_ai.input.messages" not in attrs_of(span)
    assert "gen_ai.output.messages" not in attrs_of(span)

    cfg = gateway_config(fake_openai, collector)
    cfg["recording"] = {"redact_patterns": [r"sk-live-[a-z]+"]}
    server2 = serve(cfg)
    client_for(server2).chat.completions.create(model="chat", messages=MSG, metadata={"note": "sk-live-xyz"})
    export_now(server2)
    _, span2 = collector.wait_for_spans(2)[-1]
    a = attrs_of(span2)
    assert "sk-live" not in a["gen_ai.output.messages"] and "[REDACTED]" in a["gen_ai.output.messages"]
    assert json.loads(a["shipyard.metadata"]) == {"note": "[REDACTED]"}  # attributes too


def test_exporter_retries_429_and_5xx_then_succeeds(collector):
    collector.fail_next(Fault("status", status=503))
    collector.fail_next(Fault("status", status=429, retry_after=0.05))
    exp = OtlpExporter(OtlpConfig(endpoint=collector.url), backoff_initial_s=0.01)
    exp.start()
    try:
        exp.submit([_span("one"), _span("two")])
        assert exp.flush(10)
    finally:
        exp.close()
    st = exp.stats()
    assert (st["exported"], st["failed"], st["requests"]) == (2, 0, 3)
    assert len(collector.wait_for_spans(2)) == 2


def test_exporter_gives_up_after_bounded_retries_and_on_4xx(collector):
    collector.fail_next(Fault("status", status=400))
    exp = OtlpExporter(OtlpConfig(endpoint=collector.url), backoff_initial_s=0.01)
    exp.submit([_span("rejected")])
    exp.close()  # never started: close sends synchronously
    assert (exp.stats()["failed"], exp.stats()["requests"]) == (1, 1)  # 400 is not retried

    # nothing listens on this port: connection errors are retried max_attempts times
    dead = OtlpExporter(OtlpConfig(endpoint="http://127.0.0.1:9", timeout_s=1), backoff_initial_s=0.01,
                        max_attempts=3)
    dead.start()
    dead.submit([_span("lost")])
    assert dead.flush(10)
    dead.close()
    st = dead.stats()
    assert (st["exported"], st["failed"], st["requests"]) == (0, 1, 3)
    assert "cannot reach" in st["last_error"]


def test_exporter_queue_is_bounded_and_submit_never_blocks():
    exp = OtlpExporter(OtlpConfig(endpoint="http://127.0.0.1:9"), queue_size=3)
    t0 = time.perf_counter()
    exp.submit([_span(str(i)) for i in range(10)])
    assert time.perf_counter() - t0 < 0.5
    assert exp.stats()["dropped"] == 7 and exp.stats()["queue_depth"] == 3
    ingested = _span("x")
    ingested.attributes["shipyard.source"] = "otlp"
    exp.submit([ingested])  # ingested spans are never re-exported
    assert exp.stats()["queue_depth"] == 3 and exp.stats()["dropped"] == 7


def test_traces_url():
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("http://c/otlp/v1/traces") == "http://c/otlp/v1/traces"


def _span(name: str) -> Span:
    s = Span(trace_id=new_trace_id(), span_id=new_span_id(), name=name, kind="tool")
    s.end_time = s.start_time + 0.01
    return s


# ---- ingestion ----------------------------------------------------------------------------

def kv(key, value) -> KeyValue:
    if isinstance(value, bool):
        v = AnyValue(bool_value=value)
    elif isinstance(value, int):
        v = AnyValue(int_value=value)
    elif isinstance(value, float):
        v = AnyValue(double_value=value)
    else:
        v = AnyValue(string_value=value)
    return KeyValue(key=key, value=v)


def openinference_request(trace_id: bytes, root_id: bytes, llm_id: bytes, ret_id: bytes) -> ExportTraceServiceRequest:
    t0 = int(time.time() * 1e9)
    root = trace_pb2.Span(
        trace_id=trace_id, span_id=root_id, name="rag-pipeline", kind=trace_pb2.Span.SPAN_KIND_SERVER,
        start_time_unix_nano=t0, end_time_unix_nano=t0 + 900_000_000,
        attributes=[kv("openinference.span.kind", "CHAIN"), kv("input.value", "what is shipyard?"),
                    kv("output.value", "a gateway"), kv("session.id", "sess-9"), kv("user.id", "user-9"),
                    kv("app.custom_flag", True), kv("app.build", "2024.10.1")],
    )
    retriever = trace_pb2.Span(
        trace_id=trace_id, span_id=ret_id, parent_span_id=root_id, name="retrieve",
        start_time_unix_nano=t0 + 10_000_000, end_time_unix_nano=t0 + 60_000_000,
        attributes=[kv("openinference.span.kind", "RETRIEVER"), kv("input.value", "what is shipyard?"),
                    kv("retrieval.documents.0.document.id", "doc-1"),
                    kv("retrieval.documents.0.document.content", "Shipyard is a gateway"),
                    kv("retrieval.documents.0.document.score", 0.91),
                    kv("retrieval.documents.1.document.id", "doc-7"),
                    kv("retrieval.documents.1.document.score", 0.55)],
    )
    llm = trace_pb2.Span(
        trace_id=trace_id, span_id=llm_id, parent_span_id=root_id, name="ChatCompletion",
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=t0 + 100_000_000, end_time_unix_nano=t0 + 800_000_000,
        attributes=[kv("openinference.span.kind", "LLM"), kv("llm.model_name", "gpt-4o-mini"),
                    kv("llm.provider", "openai"), kv("llm.token_count.prompt", 120),
                    kv("llm.token_count.completion", 30), kv("llm.token_count.total", 150),
                    kv("llm.input_messages.0.message.role", "system"),
                    kv("llm.input_messages.0.message.content", "Answer briefly."),
                    kv("llm.input_messages.1.message.role", "user"),
                    kv("llm.input_messages.1.message.content", "what is shipyard?"),
                    kv("llm.output_messages.0.message.role", "assistant"),
                    kv("llm.output_messages.0.message.content", "a gateway"),
                    kv("llm.invocation_parameters", '{"temperature": 0}'),
                    kv("session.id", "sess-9")],
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_OK),
    )
    res = Resource(attributes=[kv("service.name", "rag-app")])
    ss = trace_pb2.ScopeSpans(scope=InstrumentationScope(name="openinference.instrumentation.openai"),
                              spans=[root, retriever, llm])
    return ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(resource=res, scope_spans=[ss])])


def post(server, body: bytes, content_type: str, **headers) -> httpx.Response:
    return httpx.post(server.url + "/v1/traces", content=body,
                      headers={"content-type": content_type, **headers}, timeout=10)


def test_ingest_protobuf_openinference_parent_and_children(serve, fake_openai):
    server = serve(gateway_config(fake_openai))
    trace_id, root_id, llm_id, ret_id = (bytes.fromhex(new_trace_id()), bytes.fromhex(new_span_id()),
                                         bytes.fromhex(new_span_id()), bytes.fromhex(new_span_id()))
    r = post(server, openinference_request(trace_id, root_id, llm_id, ret_id).SerializeToString(),
             "application/x-protobuf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert not answer.HasField("partial_success")

    server.flush()
    trace = server.engine.store.get_trace(trace_id.hex())
    spans = {s["span_id"]: s for s in trace["spans"]}
    assert trace["span_count"] == 3 and trace["session_id"] == "sess-9"
    root, llm, ret = spans[root_id.hex()], spans[llm_id.hex()], spans[ret_id.hex()]
    assert root["kind"] == "chain" and root["parent_id"] is None
    assert root["input"] == "what is shipyard?" and root["output"] == "a gateway"
    assert root["user_id"] == "user-9"
    assert root["attributes"]["app.custom_flag"] is True and root["attributes"]["app.build"] == "2024.10.1"
    assert root["attributes"]["otel.resource"] == {"service.name": "rag-app"}
    assert root["attributes"]["otel.span_kind"] == "server"
    assert llm["kind"] == "llm" and llm["parent_id"] == root_id.hex()
    assert (llm["model"], llm["provider"]) == ("gpt-4o-mini", "openai")
    assert (llm["input_tokens"], llm["output_tokens"]) == (120, 30)
    assert llm["session_id"] == "sess-9"
    assert llm["input"]["messages"] == [{"role": "system", "content": "Answer briefly."},
                                        {"role": "user", "content": "what is shipyard?"}]
    assert llm["output"]["choices"][0]["message"] == {"role": "assistant", "content": "a gateway"}
    assert llm["attributes"]["llm.token_count.total"] == 150
    assert llm["attributes"]["llm.invocation_parameters"] == '{"temperature": 0}'
    assert llm["duration_ms"] == pytest.approx(700, abs=1)
    assert ret["kind"] == "retrieval" and ret["parent_id"] == root_id.hex()
    assert ret["attributes"]["retrieved_document_ids"] == ["doc-1", "doc-7"]
    assert ret["output"]["documents"][0] == {"id": "doc-1", "content": "Shipyard is a gateway", "score": 0.91}


def otlp_json_request(trace_id: str, parent_id: str, child_id: str, **extra_attrs) -> dict:
    t0 = int(time.time() * 1e9)
    attrs = [
        {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
        {"key": "gen_ai.system", "value": {"stringValue": "anthropic"}},
        {"key": "gen_ai.request.model", "value": {"stringValue": "claude-3-5-haiku"}},
        {"key": "gen_ai.response.model", "value": {"stringValue": "claude-3-5-haiku-20241022"}},
        {"key": "gen_ai.response.id", "value": {"stringValue": "msg_123"}},
        {"key": "gen_ai.usage.prompt_tokens", "value": {"intValue": "42"}},
        {"key": "gen_ai.usage.completion_tokens", "value": {"intValue": 8}},
        {"key": "gen_ai.request.temperature", "value": {"doubleValue": 0.5}},
        {"key": "gen_ai.input.messages", "value": {"stringValue": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": "Hi"}]}])}},
        {"key": "gen_ai.output.messages", "value": {"stringValue": json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": "Hello"}], "finish_reason": "end_turn"}])}},
        {"key": "custom.tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}}},
        {"key": "custom.nested", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": "1"}}]}}},
        *({"key": k, "value": {"stringValue": v}} for k, v in extra_attrs.items()),
    ]
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "genai-app"}}]},
        "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.anthropic", "version": "0.1"}, "spans": [
            {"traceId": trace_id, "spanId": parent_id, "name": "agent turn", "kind": 1,
             "startTimeUnixNano": str(t0), "endTimeUnixNano": str(t0 + 2_000_000_000),
             "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "invoke_agent"}}]},
            {"traceId": trace_id, "spanId": child_id, "parentSpanId": parent_id,
             "name": "chat claude-3-5-haiku", "kind": "SPAN_KIND_CLIENT",
             "startTimeUnixNano": str(t0 + 1000), "endTimeUnixNano": str(t0 + 1_500_000_000),
             "attributes": attrs, "status": {"code": 2, "message": "overloaded"},
             "events": [{"name": "exception", "timeUnixNano": str(t0 + 5),
                         "attributes": [{"key": "exception.type", "value": {"stringValue": "Overloaded"}}]}]},
        ]}],
    }]}


def test_ingest_json_genai_semconv(serve, fake_openai):
    server = serve(gateway_config(fake_openai))
    trace_id, parent_id, child_id = new_trace_id(), new_span_id(), new_span_id()
    r = post(server, json.dumps(otlp_json_request(trace_id, parent_id, child_id, **{"user.id": "u-7"})).encode(),
             "application/json; charset=utf-8")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json") and r.json() == {}

    server.flush()
    spans = {s["span_id"]: s for s in server.engine.store.get_trace(trace_id)["spans"]}
    parent, child = spans[parent_id], spans[child_id]
    assert parent["kind"] == "chain" and parent["parent_id"] is None
    assert child["kind"] == "llm" and child["parent_id"] == parent_id
    assert child["provider"] == "anthropic"
    assert (child["model"], child["response_model"]) == ("claude-3-5-haiku", "claude-3-5-haiku-20241022")
    assert child["completion_id"] == "msg_123" and child["user_id"] == "u-7"
    assert (child["input_tokens"], child["output_tokens"]) == (42, 8)
    assert child["status"] == "error" and child["error"] == "overloaded"
    assert child["input"] == {"messages": [{"role": "user", "content": "Hi"}]}
    assert child["output"]["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Hello"},
                                             "finish_reason": "end_turn"}
    a = child["attributes"]
    assert a["custom.tags"] == ["a", "b"] and a["custom.nested"] == {"k": 1}
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["otel.events"][0]["name"] == "exception"
    assert a["otel.scope"] == "opentelemetry.instrumentation.anthropic@0.1"


def test_exported_spans_round_trip_through_ingestion(serve, fake_openai, collector):
    server = serve(gateway_config(fake_openai, collector))
    raw = client_for(server).chat.completions.with_raw_response.create(model="chat", messages=MSG, user="u-1")
    export_now(server)
    collector.wait_for_spans(1)
    other = serve(gateway_config(fake_openai))  # a second gateway ingests what the first exported
    assert post(other, collector.exports[0].SerializeToString(), "application/x-protobuf").status_code == 200
    other.flush()
    (span,) = other.engine.store.get_trace(raw.headers["x-shipyard-trace-id"])["spans"]
    mine = server.engine.store.get_trace(raw.headers["x-shipyard-trace-id"])["spans"][0]
    for key in ("kind", "alias", "provider", "model", "response_model", "user_id", "input_tokens",
                "output_tokens", "completion_id", "cost_usd"):
        assert span[key] == mine[key], key
    assert span["input"]["messages"] == MSG
    assert span["attributes"]["attempts"] == mine["attributes"]["attempts"]
    assert span["attributes"]["gen_ai.provider.name"] == "openai"


def test_malformed_bodies_are_400_with_the_reason(serve, fake_openai):
    server = serve(gateway_config(fake_openai))
    r = post(server, b"\x0a\xff\xff\xff\x0f\x01", "application/x-protobuf")
    assert r.status_code == 400 and r.headers["content-type"] == "application/x-protobuf"
    assert r.content[:2] == b"\x08\x03"  # google.rpc.Status{code: INVALID_ARGUMENT, message: ...}
    assert b"not a valid protobuf ExportTraceServiceRequest" in r.content

    r = post(server, b'{"resourceSpans": [', "application/json")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_otlp" and "not valid JSON" in r.json()["error"]["message"]

    bad_id = otlp_json_request("not-hex", new_span_id(), new_span_id())
    r = post(server, json.dumps(bad_id).encode(), "application/json")
    assert r.status_code == 400
    assert "resourceSpans[0].scopeSpans[0].spans[0].traceId" in r.json()["error"]["message"]

    r = post(server, json.dumps({"resourceSpans": "nope"}).encode(), "application/json")
    assert r.status_code == 400 and "ExportTraceServiceRequest" in r.json()["error"]["message"]

    r = post(server, b"{}", "text/plain")
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_invalid_spans_are_reported_as_partial_success(serve, fake_openai):
    server = serve(gateway_config(fake_openai))
    trace_id = bytes.fromhex(new_trace_id())
    good = trace_pb2.Span(trace_id=trace_id, span_id=bytes.fromhex(new_span_id()), name="ok",
                          start_time_unix_nano=time.time_ns(), end_time_unix_nano=time.time_ns())
    short_id = trace_pb2.Span(trace_id=trace_id, span_id=b"\x01\x02", name="bad",
                              start_time_unix_nano=time.time_ns())
    req = ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=[good, short_id])])])
    r = post(server, req.SerializeToString(), "application/x-protobuf")
    assert r.status_code == 200
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert answer.partial_success.rejected_spans == 1
    assert "span_id must be 8 bytes" in answer.partial_success.error_message
    server.flush()
    assert [s["name"] for s in server.engine.store.get_trace(trace_id.hex())["spans"]] == ["ok"]

    # the JSON answer carries the same, in OTLP/JSON
    doc = json.loads(json.dumps(otlp_json_request(trace_id.hex(), new_span_id(), new_span_id())))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["startTimeUnixNano"] = "0"
    r = post(server, json.dumps(doc).encode(), "application/json")
    assert r.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert "start_time_unix_nano is missing" in r.json()["partialSuccess"]["errorMessage"]


def test_gzip_bodies_and_size_limits(serve, fake_openai):
    cfg = gateway_config(fake_openai)
    cfg["server"] = {"max_body_bytes": 64 * 1024}
    cfg["recording"] = {"max_payload_bytes": 1024}
    server = serve(cfg)
    trace_id, parent_id, child_id = new_trace_id(), new_span_id(), new_span_id()
    huge = "x" * 5000
    body = json.dumps(otlp_json_request(trace_id, parent_id, child_id, **{"app.huge": huge, "input.value": huge}))
    r = post(server, gzip.compress(body.encode()), "application/json", **{"content-encoding": "gzip"})
    assert r.status_code == 200, r.text
    server.flush()
    spans = {s["span_id"]: s for s in server.engine.store.get_trace(trace_id)["spans"]}
    kept = spans[child_id]["attributes"]["app.huge"]  # oversized values are cut, not dropped
    assert kept.startswith("x" * 1000) and "truncated by shipyard" in kept and len(kept) < 1200

    big = b"{" + b" " * (70 * 1024) + b"}"
    assert post(server, big, "application/json").status_code == 413
    bomb = gzip.compress(b" " * (1024 * 1024))  # small on the wire, 1 MiB inflated
    r = post(server, bomb, "application/x-protobuf", **{"content-encoding": "gzip"})
    assert r.status_code == 413 and r.content[:2] == b"\x08\x08"  # RESOURCE_EXHAUSTED
    r = post(server, b"not gzip", "application/json", **{"content-encoding": "gzip"})
    assert r.status_code == 400 and "gzip" in r.json()["error"]["message"]
    r = post(server, b"{}", "application/json", **{"content-encoding": "br"})
    assert r.status_code == 415


def test_ingested_spans_are_not_exported_again(serve, fake_openai, collector):
    server = serve(gateway_config(fake_openai, collector))
    trace_id = new_trace_id()
    r = post(server, json.dumps(otlp_json_request(trace_id, new_span_id(), new_span_id())).encode(),
             "application/json")
    assert r.status_code == 200
    client_for(server).chat.completions.create(model="chat", messages=MSG)
    export_now(server)
    spans = collector.wait_for_spans(1)
    time.sleep(0.1)
    assert len(collector.spans()) == 1 and spans[0][1].trace_id.hex() != trace_id


def test_otlp_config_errors_name_the_key():
    from shipyard.config import load_config
    from shipyard.errors import ConfigError

    with pytest.raises(ConfigError, match=r"otlp\.endpoint: must be an http:// or https:// URL"):
        load_config({"otlp": {"endpoint": "collector:4318"}})
    with pytest.raises(ConfigError, match=r"otlp\.compression: unknown key"):
        load_config({"otlp": {"endpoint": "http://c:4318", "compression": "gzip"}})
    assert load_config({"otlp": {"endpoint": "http://c:4318", "enabled": False}}).otlp.enabled is False
