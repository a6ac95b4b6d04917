"""Spans <-> OTLP: our Span as an OpenTelemetry span with the GenAI semantic conventions
(export), and OTLP spans from GenAI- or OpenInference-instrumented apps as our Spans
(ingestion). Only the mapping lives here; transport is in ``otlp_export.py`` and
``server/otlp_routes.py``. The attribute tables are documented in docs/observability.md.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from .redact import REDACTED, TRUNCATED_MARK
from .span import Span

SERVICE_NAME = "shipyard"
SCOPE_NAME = "shipyard"
INGESTED_MARK = "shipyard.source"  # attributes[INGESTED_MARK] == "otlp" on ingested spans

# our provider *type* -> gen_ai.provider.name (well-known values where one exists)
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "llama_cpp": "llama_cpp"}

CLIENT_KINDS = frozenset({"llm", "embedding"})
OPERATION_NAMES = {"llm": "chat", "embedding": "embeddings"}

# request body key -> (attribute, python type)
REQUEST_PARAMS = (
    ("temperature", "gen_ai.request.temperature", float),
    ("max_tokens", "gen_ai.request.max_tokens", int),
    ("max_completion_tokens", "gen_ai.request.max_tokens", int),
    ("top_p", "gen_ai.request.top_p", float),
    ("seed", "gen_ai.request.seed", int),
    ("frequency_penalty", "gen_ai.request.frequency_penalty", float),
    ("presence_penalty", "gen_ai.request.presence_penalty", float),
)


def error_type(span: Span) -> str | None:
    """A low-cardinality class for a failed span (OTel ``error.type``; the metrics'
    ``error_kind``): the last failed attempt's outcome (``http_503``, ``timeout``,
    ``breaker_open``, ...), ``cancelled``, ``fallback_response``, ``stream_error`` or
    ``internal``. None for a successful span."""
    if span.status != "error":
        return None
    attrs = span.attributes or {}
    if attrs.get("http_status") == 499:
        return "cancelled"
    attempts = attrs.get("attempts") or []
    last = attempts[-1] if attempts and isinstance(attempts[-1], dict) else None
    if attrs.get("fallback_response"):
        return "fallback_response"
    if last is not None and last.get("outcome") not in (None, "ok"):
        return str(last["outcome"])
    if last is not None:
        return "stream_error"  # the call succeeded; the stream broke afterwards
    return "internal"


# ---------------------------------------------------------------------------------------
# export: Span -> OTLP
# ---------------------------------------------------------------------------------------

def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value) if -(2**63) <= value < 2**63 else AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, bool, int, float)) for v in value):
        out = AnyValue()
        out.array_value.values.extend(any_value(v) for v in value)
        return out
    return AnyValue(string_value=orjson.dumps(value, default=str).decode())


def _kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def to_semconv_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages -> GenAI semconv messages (``role`` + typed ``parts``)."""
    out: list[dict[str, Any]] = []
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        role, content = m.get("role"), m.get("content")
        parts: list[dict[str, Any]] = []
        if role == "tool":
            parts.append({"type": "tool_call_response", "id": m.get("tool_call_id"), "response": content})
        elif isinstance(content, str):
            parts.append({"type": "text", "content": content})
        elif isinstance(content, list):
            for p in content:
                if isinstance(p, dict) and p.get("type") == "text":
                    parts.append({"type": "text", "content": p.get("text")})
                elif isinstance(p, dict) and p.get("type") == "image_url":
                    url = (p.get("image_url") or {}).get("url") if isinstance(p.get("image_url"), dict) else None
                    parts.append({"type": "uri", "modality": "image", "uri": url})
                else:
                    parts.append(p if isinstance(p, dict) else {"type": "text", "content": p})
        for tc in m.get("tool_calls") or []:
            if not isinstance(tc, dict):
                continue
            fn = tc.get("function") or {}
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    args = orjson.loads(args)
                except orjson.JSONDecodeError:
                    pass
            parts.append({"type": "tool_call", "id": tc.get("id"), "name": fn.get("name"), "arguments": args})
        msg: dict[str, Any] = {"role": role, "parts": parts}
        if m.get("name"):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def _output_messages(output: Any) -> tuple[list[dict[str, Any]], list[str]]:
    msgs: list[dict[str, Any]] = []
    reasons: list[str] = []
    choices = output.get("choices") if isinstance(output, dict) else None
    for c in choices if isinstance(choices, list) else []:
        if not isinstance(c, dict):
            continue
        fr = c.get("finish_reason")
        if isinstance(fr, str):
            reasons.append(fr)
        message = c.get("message") if isinstance(c.get("message"), dict) else {"role": "assistant"}
        (m,) = to_semconv_messages([{**message, "role": message.get("role") or "assistant"}])
        m["finish_reason"] = fr
        msgs.append(m)
    return msgs, reasons


def _hex_id(value: str | None, size: int) -> bytes:
    if not value:
        return b""
    raw = bytes.fromhex(value)
    if len(raw) != size:
        raise ValueError(f"expected {size} bytes, got {len(raw)}")
    return raw


def _nanos(t: float | None) -> int:
    return int(round(t * 1e9)) if t is not None else 0


def span_to_otlp(
    span: Span,
    provider_type: str | None = None,
    *,
    capture_content: bool = True,
    dump: Callable[[Any], str | None] | None = None,
) -> trace_pb2.Span:
    """One Span as an OTLP span. ``dump`` turns a payload into redacted, capped JSON
    text (the recorder's redactor); without it, content is not captured."""
    attrs: list[KeyValue] = []

    def add(key: str, value: Any) -> None:
        if value is not None:
            attrs.append(_kv(key, value))

    op = OPERATION_NAMES.get(span.kind)
    name = span.name
    if op is not None:
        add("gen_ai.operation.name", op)
        system = PROVIDER_NAMES.get(provider_type or "", provider_type)
        add("gen_ai.provider.name", system)
        add("gen_ai.system", system)
        add("gen_ai.request.model", span.model)
        add("gen_ai.response.model", span.response_model)
        add("gen_ai.response.id", span.completion_id)
        add("gen_ai.usage.input_tokens", span.input_tokens)
        add("gen_ai.usage.output_tokens", span.output_tokens)
        add("gen_ai.usage.cache_read.input_tokens", span.cached_tokens)
        if span.model:
            name = f"{op} {span.model}"
        body = span.input if isinstance(span.input, dict) else {}
        seen: set[str] = set()
        for key, attr, typ in REQUEST_PARAMS:
            v = body.get(key)
            if attr not in seen and isinstance(v, (int, float)) and not isinstance(v, bool):
                add(attr, typ(v))
                seen.add(attr)
        if isinstance(body.get("stop"), (str, list)):
            stop = body["stop"]
            add("gen_ai.request.stop_sequences", [stop] if isinstance(stop, str) else [str(s) for s in stop])
        if isinstance(body.get("n"), int) and body["n"] != 1:
            add("gen_ai.request.choice.count", body["n"])
        out_msgs, reasons = _output_messages(span.output)
        if reasons:
            add("gen_ai.response.finish_reasons", reasons)
        if capture_content and dump is not None and span.kind == "llm":
            if isinstance(body.get("messages"), list):
                add("gen_ai.input.messages", dump(to_semconv_messages(body["messages"])))
            if out_msgs:
                add("gen_ai.output.messages", dump(out_msgs))
    add("shipyard.alias", span.alias)
    add("shipyard.provider", span.provider)
    add("shipyard.cost_usd", span.cost_usd)
    add("shipyard.ttft_ms", span.ttft_ms)
    add("user.id", span.user_id)
    add("session.id", span.session_id)
    if span.session_id is not None and op is not None:
        add("gen_ai.conversation.id", span.session_id)
    for key, value in (span.attributes or {}).items():
        if value is None or key == INGESTED_MARK:
            continue
        if dump is not None and isinstance(value, (str, list, dict)):  # redacted and capped like payloads
            text = dump(value) or ""
            value = orjson.loads(text) if isinstance(value, str) else text
            value = value if isinstance(value, str) else text
        add(key if "." in key else f"shipyard.{key}", value)
    status = trace_pb2.Status()
    if span.status == "error":
        status.code = trace_pb2.Status.STATUS_CODE_ERROR
        status.message = span.error or ""
        add("error.type", error_type(span))
    return trace_pb2.Span(
        trace_id=_hex_id(span.trace_id, 16),
        span_id=_hex_id(span.span_id, 8),
        parent_span_id=_hex_id(span.parent_id, 8),
        name=name,
        kind=trace_pb2.Span.SPAN_KIND_CLIENT if span.kind in CLIENT_KINDS else trace_pb2.Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=_nanos(span.start_time),
        end_time_unix_nano=_nanos(span.end_time if span.end_time is not None else span.start_time),
        attributes=attrs,
        status=status,
    )


def build_export_request(
    spans: Iterable[Span],
    provider_type: Callable[[str | None], str | None] = lambda name: None,
    *,
    capture_content: bool = True,
    dump: Callable[[Any], str | None] | None = None,
    service_version: str | None = None,
) -> tuple[ExportTraceServiceRequest, int]:
    """An ExportTraceServiceRequest for ``spans`` and how many spans could not be mapped."""
    resource = Resource(attributes=[_kv("service.name", SERVICE_NAME)])
    if service_version:
        resource.attributes.append(_kv("service.version", service_version))
    scope_spans = trace_pb2.ScopeSpans(scope=InstrumentationScope(name=SCOPE_NAME, version=service_version or ""))
    bad = 0
    for s in spans:
        try:
            scope_spans.spans.append(
                span_to_otlp(s, provider_type(s.provider), capture_content=capture_content, dump=dump))
        except (ValueError, TypeError):
            bad += 1
    req = ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(resource=resource, scope_spans=[scope_spans])])
    return req, bad


# ---------------------------------------------------------------------------------------
# ingestion: OTLP -> Span
# ---------------------------------------------------------------------------------------

class OtlpDecodeError(ValueError):
    """The body is not a valid OTLP ExportTraceServiceRequest; the message says why."""


_ID_FIELDS = {"traceId": 16, "trace_id": 16, "spanId": 8, "span_id": 8, "parentSpanId": 8, "parent_span_id": 8}


def _ids_hex_to_b64(obj: dict[str, Any], where: str) -> None:
    for key, size in _ID_FIELDS.items():
        v = obj.get(key)
        if v is None or v == "":
            continue
        if not isinstance(v, str) or not re.fullmatch(r"[0-9a-fA-F]*", v) or len(v) != size * 2:
            raise OtlpDecodeError(f"{where}.{key}: expected {size * 2} hex characters, got {v!r:.60}")
        obj[key] = base64.b64encode(bytes.fromhex(v)).decode()


def parse_json_request(raw: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON: protobuf JSON mapping, except trace and span ids are hex strings."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OtlpDecodeError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise OtlpDecodeError("the body must be a JSON object (an ExportTraceServiceRequest)")
    rs_key = "resourceSpans" if "resourceSpans" in data else "resource_spans"
    for i, rs in enumerate(data.get(rs_key) or []):
        if not isinstance(rs, dict):
            continue
        ss_key = "scopeSpans" if "scopeSpans" in rs else "scope_spans"
        for j, ss in enumerate(rs.get(ss_key) or []):
            if not isinstance(ss, dict):
                continue
            for k, sp in enumerate(ss.get("spans") or []):
                if not isinstance(sp, dict):
                    continue
                where = f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]"
                _ids_hex_to_b64(sp, where)
                for n, link in enumerate(sp.get("links") or []):
                    if isinstance(link, dict):
                        _ids_hex_to_b64(link, f"{where}.links[{n}]")
    try:
        return json_format.ParseDict(data, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise OtlpDecodeError(f"not an OTLP ExportTraceServiceRequest: {exc}") from None


def parse_protobuf_request(raw: bytes) -> ExportTraceServiceRequest:
    from google.protobuf.message import DecodeError

    try:
        return ExportTraceServiceRequest.FromString(raw)
    except (DecodeError, ValueError) as exc:
        raise OtlpDecodeError(f"the body is not a valid protobuf ExportTraceServiceRequest: {exc}") from None


def response_bytes(rejected: int, message: str, as_json: bool) -> bytes:
    resp = ExportTraceServiceResponse()
    if rejected or message:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    if as_json:
        return orjson.dumps(json_format.MessageToDict(resp))
    return resp.SerializeToString()


def rpc_status_bytes(code: int, message: str) -> bytes:
    """A google.rpc.Status message (code = 1, message = 2), hand-encoded."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    msg = message.encode()
    return b"\x08" + varint(code) + b"\x12" + varint(len(msg)) + msg


def from_any_value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which == "bool_value":
        return v.bool_value
    if which == "int_value":
        return v.int_value
    if which == "double_value":
        return v.double_value
    if which == "array_value":
        return [from_any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: from_any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return None


OPENINFERENCE_KINDS = {
    "LLM": "llm", "RETRIEVER": "retrieval", "EMBEDDING": "embedding", "TOOL": "tool",
    "CHAIN": "chain", "GUARDRAIL": "guard", "EVALUATOR": "evaluator", "AGENT": "chain",
    "RERANKER": "retrieval",
}
GENAI_OPERATION_KINDS = {
    "chat": "llm", "text_completion": "llm", "generate_content": "llm", "embeddings": "embedding",
    "execute_tool": "tool", "invoke_agent": "chain", "create_agent": "chain", "retrieval": "retrieval",
}
TRACELOOP_KINDS = {"workflow": "chain", "task": "chain", "agent": "chain", "tool": "tool"}
_JSON_ATTRS = ("attempts", "metadata")


@dataclass(slots=True)
class IngestLimits:
    """Per-value cap on kept attributes, and the redaction the recorder applies to payloads."""

    max_value_bytes: int = 64 * 1024
    redact_keys: frozenset[str] = frozenset()
    redact_patterns: tuple[re.Pattern[str], ...] = ()
    max_events: int = 32


@dataclass(slots=True)
class IngestResult:
    spans: list[Span] = field(default_factory=list)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


def _cap(value: Any, limits: IngestLimits) -> Any:
    """Redact and cap one attribute value: oversized values are cut with a marker, never dropped."""
    if isinstance(value, str):
        for p in limits.redact_patterns:
            value = p.sub(REDACTED, value)
        raw = value.encode()
        if len(raw) <= limits.max_value_bytes:
            return value
        cut = raw[: limits.max_value_bytes].decode("utf-8", "ignore")
        return cut + TRUNCATED_MARK.format(n=len(raw) - len(cut.encode()))
    if isinstance(value, (list, dict)):
        if isinstance(value, dict):
            value = {k: REDACTED if k.lower() in limits.redact_keys else _cap(v, limits) for k, v in value.items()}
        else:
            value = [_cap(v, limits) for v in value]
        raw = orjson.dumps(value, default=str)
        if len(raw) <= limits.max_value_bytes:
            return value
        cut = raw[: limits.max_value_bytes].decode("utf-8", "ignore")
        return {"_truncated": True, "_original_bytes": len(raw),
                "text": cut + TRUNCATED_MARK.format(n=len(raw) - len(cut.encode()))}
    return value


def _unflatten(attrs: dict[str, Any], prefix: str) -> list[Any]:
    """``prefix.0.message.role = x`` ... -> ``[{"message": {"role": x}}]`` (consumes the keys)."""
    tree: dict[str, Any] = {}
    for key in [k for k in attrs if k.startswith(prefix)]:
        node = tree
        parts = key[len(prefix):].split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = attrs.pop(key)

    def listify(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
        return node

    out = listify(tree)
    return out if isinstance(out, list) else ([out] if out else [])


def _oi_message(m: Any) -> dict[str, Any] | None:
    """An OpenInference ``message`` object as an OpenAI chat message."""
    m = m.get("message", m) if isinstance(m, dict) else None
    if not isinstance(m, dict):
        return None
    out: dict[str, Any] = {"role": m.get("role")}
    content = m.get("content")
    if content is None and isinstance(m.get("contents"), list):
        texts = [c["message_content"].get("text") for c in m["contents"]
                 if isinstance(c, dict) and isinstance(c.get("message_content"), dict)]
        content = "".join(t for t in texts if isinstance(t, str))
    out["content"] = content
    for key in ("name", "tool_call_id"):
        if m.get(key) is not None:
            out[key] = m[key]
    calls = []
    for tc in m.get("tool_calls") if isinstance(m.get("tool_calls"), list) else []:
        if isinstance(tc, dict) and isinstance(tc.get("tool_call"), dict):
            tc = tc["tool_call"]
        if not isinstance(tc, dict):
            continue
        fn = tc["function"] if isinstance(tc.get("function"), dict) else {}
        calls.append({"id": tc.get("id"), "type": "function",
                      "function": {"name": fn.get("name"), "arguments": fn.get("arguments")}})
    if calls:
        out["tool_calls"] = calls
    return out


def from_semconv_messages(messages: Any) -> list[dict[str, Any]]:
    """GenAI semconv messages (role + parts) -> OpenAI chat messages; anything else kept."""
    out: list[dict[str, Any]] = []
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict) or not isinstance(m.get("parts"), list):
            out.append(m)
            continue
        texts, calls, other = [], [], []
        msg: dict[str, Any] = {"role": m.get("role")}
        for p in m["parts"]:
            t = p.get("type") if isinstance(p, dict) else None
            if t == "text":
                texts.append(str(p.get("content") or ""))
            elif t == "tool_call":
                args = p.get("arguments")
                calls.append({"id": p.get("id"), "type": "function",
                              "function": {"name": p.get("name"),
                                           "arguments": args if isinstance(args, str) else orjson.dumps(args).decode()}})
            elif t == "tool_call_response":
                msg["role"] = m.get("role") or "tool"
                msg["tool_call_id"] = p.get("id")
                texts.append(p["response"] if isinstance(p.get("response"), str)
                             else orjson.dumps(p.get("response"), default=str).decode())
            else:
                other.append(p)
        msg["content"] = ([{"type": "text", "text": t} for t in texts] + other) if other else ("".join(texts) if texts else None)
        if calls:
            msg["tool_calls"] = calls
        if m.get("name"):
            msg["name"] = m["name"]
        if m.get("finish_reason") is not None:
            msg["finish_reason"] = m["finish_reason"]
        out.append(msg)
    return out


def _as_choices(messages: list[dict[str, Any]]) -> dict[str, Any]:
    choices = []
    for i, m in enumerate(messages):
        m = dict(m) if isinstance(m, dict) else {"role": "assistant", "content": m}
        fr = m.pop("finish_reason", None)
        choices.append({"index": i, "message": m, "finish_reason": fr})
    return {"choices": choices}


def _maybe_json(value: Any, mime: Any) -> Any:
    if isinstance(value, str) and (mime == "application/json" or value[:1] in ("{", "[")):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _combine(value: Any, messages: Any, key: str) -> Any:
    if not messages:
        return value
    if value is None:
        return {key: messages} if key == "messages" else _as_choices(messages)
    if isinstance(value, dict):
        return value if key in value else {**value, **({key: messages} if key == "messages" else _as_choices(messages))}
    return {**({key: messages} if key == "messages" else _as_choices(messages)), "value": value}


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return None


def _float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v) if isinstance(v, str) else None
    except ValueError:
        return None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else (str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)


def _pop_first(attrs: dict[str, Any], *keys: str) -> Any:
    found = None
    for k in keys:
        if k in attrs:
            v = attrs.pop(k)
            if found is None and v is not None and v != "":
                found = v
    return found


def _kind_of(attrs: dict[str, Any]) -> str:
    oi = attrs.pop("openinference.span.kind", None)
    if isinstance(oi, str) and oi.upper() in OPENINFERENCE_KINDS:
        return OPENINFERENCE_KINDS[oi.upper()]
    op = attrs.get("gen_ai.operation.name")
    if isinstance(op, str) and op in GENAI_OPERATION_KINDS:
        return GENAI_OPERATION_KINDS[op]
    tl = attrs.get("traceloop.span.kind")
    if isinstance(tl, str) and tl in TRACELOOP_KINDS:
        return TRACELOOP_KINDS[tl]
    if any(k in attrs for k in ("gen_ai.request.model", "llm.model_name", "gen_ai.system", "gen_ai.provider.name")):
        return "llm"
    return "chain"


def otlp_to_span(sp: trace_pb2.Span, resource: dict[str, Any], scope: str | None,
                 limits: IngestLimits) -> Span:
    """One OTLP span as our Span; raises ValueError naming what is wrong with it."""
    if len(sp.trace_id) != 16 or not any(sp.trace_id):
        raise ValueError("trace_id must be 16 bytes and not all zero")
    if len(sp.span_id) != 8 or not any(sp.span_id):
        raise ValueError("span_id must be 8 bytes and not all zero")
    if sp.parent_span_id and len(sp.parent_span_id) != 8:
        raise ValueError("parent_span_id must be empty or 8 bytes")
    if not sp.start_time_unix_nano:
        raise ValueError("start_time_unix_nano is missing")
    attrs = {kv.key: from_any_value(kv.value) for kv in sp.attributes}
    kind = _kind_of(attrs)
    start = sp.start_time_unix_nano / 1e9
    end = max(start, sp.end_time_unix_nano / 1e9) if sp.end_time_unix_nano else None
    span = Span(
        trace_id=sp.trace_id.hex(), span_id=sp.span_id.hex(),
        parent_id=sp.parent_span_id.hex() if sp.parent_span_id and any(sp.parent_span_id) else None,
        name=sp.name or "span", kind=kind, start_time=start, end_time=end,
    )
    # lineage
    model = _str(_pop_first(attrs, "gen_ai.request.model", "llm.model_name", "embedding.model_name"))
    span.model = model
    span.response_model = _str(_pop_first(attrs, "gen_ai.response.model"))
    system = _str(_pop_first(attrs, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"))
    configured = _str(_pop_first(attrs, "shipyard.provider"))  # a span Shipyard exported itself
    span.provider = configured or system
    if configured and system:
        attrs["gen_ai.provider.name"] = system
    span.alias = _str(_pop_first(attrs, "shipyard.alias"))
    span.completion_id = _str(_pop_first(attrs, "gen_ai.response.id"))
    span.user_id = _str(_pop_first(attrs, "user.id", "enduser.id"))
    span.session_id = _str(_pop_first(attrs, "session.id", "gen_ai.conversation.id"))
    span.input_tokens = _int(_pop_first(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"))
    span.output_tokens = _int(_pop_first(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion"))
    span.cached_tokens = _int(_pop_first(attrs, "gen_ai.usage.cache_read.input_tokens", "llm.token_count.prompt_details.cache_read"))
    span.cost_usd = _float(_pop_first(attrs, "shipyard.cost_usd", "llm.cost.total"))
    span.ttft_ms = _float(_pop_first(attrs, "shipyard.ttft_ms"))
    # payloads: GenAI messages, OpenInference values/messages, older flattened gen_ai.prompt
    in_mime, out_mime = attrs.pop("input.mime_type", None), attrs.pop("output.mime_type", None)
    in_value = _maybe_json(attrs.pop("input.value", None), in_mime)
    out_value = _maybe_json(attrs.pop("output.value", None), out_mime)
    in_msgs = _maybe_json(attrs.pop("gen_ai.input.messages", None), "application/json")
    out_msgs = _maybe_json(attrs.pop("gen_ai.output.messages", None), "application/json")
    in_msgs = from_semconv_messages(in_msgs) if isinstance(in_msgs, list) else None
    out_msgs = from_semconv_messages(out_msgs) if isinstance(out_msgs, list) else None
    if in_msgs is None:
        oi = [m for m in (_oi_message(x) for x in _unflatten(attrs, "llm.input_messages.")) if m]
        legacy = [x for x in _unflatten(attrs, "gen_ai.prompt.") if isinstance(x, dict)]
        in_msgs = oi or legacy or None
    if out_msgs is None:
        oi = [m for m in (_oi_message(x) for x in _unflatten(attrs, "llm.output_messages.")) if m]
        legacy = [x for x in _unflatten(attrs, "gen_ai.completion.") if isinstance(x, dict)]
        out_msgs = oi or legacy or None
    for key in ("gen_ai.prompt", "gen_ai.completion"):  # older single-string forms
        if isinstance(attrs.get(key), str):
            v = _maybe_json(attrs.pop(key), None)
            if key == "gen_ai.prompt" and in_value is None:
                in_value = v
            elif key == "gen_ai.completion" and out_value is None:
                out_value = v
    docs = _unflatten(attrs, "retrieval.documents.")
    docs = [d.get("document", d) if isinstance(d, dict) else d for d in docs]
    if docs:
        ids = [d.get("id") for d in docs if isinstance(d, dict) and d.get("id") is not None]
        if ids:
            attrs["retrieved_document_ids"] = [str(i) for i in ids]
        if out_value is None:
            out_value = {"documents": docs}
        else:
            attrs["retrieval.documents"] = docs
    span.input = _combine(in_value, in_msgs, "messages")
    span.output = _combine(out_value, out_msgs, "choices")
    # our own exported extras come back under their plain names
    for key in [k for k in attrs if k.startswith("shipyard.") and "." not in k[9:]]:
        value = attrs.pop(key)
        short = key[9:]
        attrs[short] = _maybe_json(value, "application/json") if short in _JSON_ATTRS else value
    # status
    if sp.status.code == trace_pb2.Status.STATUS_CODE_ERROR:
        span.status = "error"
        exc_msg = None
        for ev in sp.events:
            if ev.name == "exception":
                ev_attrs = {kv.key: from_any_value(kv.value) for kv in ev.attributes}
                exc_msg = ev_attrs.get("exception.message") or ev_attrs.get("exception.type")
                break
        span.error = sp.status.message or _str(exc_msg) or _str(attrs.get("error.type")) or "error"
    # the rest is kept, redacted and capped
    kept: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        leaf = key.rsplit(".", 1)[-1].lower()
        kept[key] = REDACTED if (key.lower() in limits.redact_keys or leaf in limits.redact_keys) else _cap(value, limits)
    if sp.kind not in (trace_pb2.Span.SPAN_KIND_UNSPECIFIED, trace_pb2.Span.SPAN_KIND_INTERNAL):
        kept["otel.span_kind"] = trace_pb2.Span.SpanKind.Name(sp.kind)[len("SPAN_KIND_"):].lower()
    if resource:
        kept["otel.resource"] = _cap(resource, limits)
    if scope:
        kept["otel.scope"] = scope
    if sp.events:
        kept["otel.events"] = _cap([
            {"name": ev.name, "time": ev.time_unix_nano / 1e9,
             **({"attributes": {kv.key: from_any_value(kv.value) for kv in ev.attributes}} if ev.attributes else {})}
            for ev in list(sp.events)[: limits.max_events]
        ], limits)
        if len(sp.events) > limits.max_events:
            kept["otel.dropped_events_count"] = len(sp.events) - limits.max_events
    if sp.links:
        kept["otel.links"] = [{"trace_id": ln.trace_id.hex(), "span_id": ln.span_id.hex()} for ln in sp.links[:32]]
    kept[INGESTED_MARK] = "otlp"
    span.attributes = kept
    return span


def request_to_spans(req: ExportTraceServiceRequest, limits: IngestLimits | None = None) -> IngestResult:
    """Every span of a request as our Span; invalid spans are counted and explained."""
    limits = limits or IngestLimits()
    result = IngestResult()
    for rs in req.resource_spans:
        resource = {kv.key: from_any_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            scope = ss.scope.name + (f"@{ss.scope.version}" if ss.scope.version else "") if ss.scope.name else None
            for sp in ss.spans:
                try:
                    result.spans.append(otlp_to_span(sp, resource, scope, limits))
                except Exception as exc:  # one odd span never fails the batch
                    reason = str(exc) if isinstance(exc, ValueError) else f"could not be mapped ({type(exc).__name__})"
                    result.rejected += 1
                    if len(result.errors) < 5:
                        result.errors.append(f"span {sp.span_id.hex() or '?'} ({sp.name!r:.40}): {reason}")
    return result
