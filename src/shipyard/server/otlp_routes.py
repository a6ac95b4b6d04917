"""OTLP/HTTP trace ingestion: ``POST /v1/traces`` from OpenTelemetry- or
OpenInference-instrumented apps; their spans are recorded like the gateway's own.

Bodies are ``application/x-protobuf`` or ``application/json`` (OTLP/JSON: hex ids),
optionally gzip-compressed, at most ``server.max_body_bytes`` (also after decompression).
The answer is an ExportTraceServiceResponse in the request's encoding; spans that could
not be mapped are reported in ``partial_success``. A malformed body is a 400: a
``google.rpc.Status`` for protobuf requests, OpenAI-style error JSON otherwise.
When the recorder's queue has no room for the batch the answer is 503 with Retry-After
(safe to retry: a span id already stored is ignored).
"""

from __future__ import annotations

import asyncio
import re
import zlib
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import GatewayError, InvalidRequest, PayloadTooLarge
from ..tracing.otlp import (
    IngestLimits,
    OtlpDecodeError,
    parse_json_request,
    parse_protobuf_request,
    request_to_spans,
    response_bytes,
    rpc_status_bytes,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
OFFLOAD_BYTES = 32 * 1024  # decode bigger bodies off the event loop
RPC_INVALID_ARGUMENT, RPC_RESOURCE_EXHAUSTED, RPC_UNAVAILABLE = 3, 8, 14


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {limit} bytes.",
                              code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """gzip (or deflate) bodies, refusing output over ``limit`` bytes (no zip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; use gzip or none.",
                                   code="unsupported_encoding")
    d = zlib.decompressobj(zlib.MAX_WBITS | 32 if encoding != "deflate" else zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"The body is not valid {encoding} data: {exc}", code="invalid_encoding") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"The decompressed body exceeds the limit of {limit} bytes.", code="request_too_large")
    return out


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def otlp_routes(engine: Any) -> list[Route]:
    cfg = engine.config
    limit = cfg.server.max_body_bytes
    rec = cfg.recording
    limits = IngestLimits(
        max_value_bytes=rec.max_payload_bytes,
        redact_keys=frozenset(k.lower() for k in rec.redact_keys),
        redact_patterns=tuple(re.compile(p) for p in rec.redact_patterns),
    )

    def error(exc: GatewayError, as_protobuf: bool, rpc_code: int = RPC_INVALID_ARGUMENT) -> Response:
        if as_protobuf:
            return Response(rpc_status_bytes(rpc_code, exc.message), status_code=exc.status,
                            headers=exc.headers, media_type=PROTOBUF)
        return Response(orjson.dumps(exc.to_dict()), status_code=exc.status, headers=exc.headers,
                        media_type=JSON)

    def decode(raw: bytes, as_protobuf: bool):
        req = parse_protobuf_request(raw) if as_protobuf else parse_json_request(raw)
        return request_to_spans(req, limits)

    async def traces(request: Request) -> Response:
        media = _media_type(request)
        if media not in (PROTOBUF, JSON):
            return error(UnsupportedMediaType(
                f"Content-Type {media or 'none'!r} is not supported; send {PROTOBUF} or {JSON}.",
                code="unsupported_media_type"), False)
        as_protobuf = media == PROTOBUF
        try:
            raw = decompress(await read_body(request, limit), request.headers.get("content-encoding", ""), limit)
            if len(raw) > OFFLOAD_BYTES:
                result = await asyncio.to_thread(decode, raw, as_protobuf)
            else:
                result = decode(raw, as_protobuf)
        except OtlpDecodeError as exc:
            return error(InvalidRequest(str(exc), code="invalid_otlp"), as_protobuf)
        except GatewayError as exc:
            return error(exc, as_protobuf, RPC_RESOURCE_EXHAUSTED if exc.status == 413 else RPC_INVALID_ARGUMENT)
        except ClientDisconnect:
            return Response(status_code=499)

        recorder = engine.recorder
        if result.spans and not recorder.enabled:
            return error(GatewayError("Recording is disabled on this gateway (recording.enabled or store); "
                                      "spans cannot be ingested.", status=503, code="recording_disabled"),
                         as_protobuf, RPC_UNAVAILABLE)
        if recorder.depth + len(result.spans) > recorder.maxsize:
            return error(GatewayError("The recorder's queue is full; retry later.", status=503,
                                      code="recorder_busy", headers={"retry-after": "1"}),
                         as_protobuf, RPC_UNAVAILABLE)
        messages = list(result.errors)
        if result.rejected > len(result.errors):
            messages.append(f"and {result.rejected - len(result.errors)} more spans rejected")
        lost = sum(1 for s in result.spans if not recorder.record(s))
        if lost:
            messages.append(f"{lost} spans dropped: the recorder's queue is full")
        body = response_bytes(result.rejected + lost, "; ".join(messages), as_json=not as_protobuf)
        return Response(body, media_type=PROTOBUF if as_protobuf else JSON)

    return [Route("/v1/traces", traces, methods=["POST"])]
