"""Any OpenAI-compatible server: OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's server.

Requests go out almost untouched (the gateway's canonical shape *is* OpenAI's), over one
pooled keep-alive client per provider (http_client.py). Every failure becomes an ``UpstreamError`` that says
whether a retry or another target might help.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Literal

import orjson
from pydantic import Field, SecretStr

from ..errors import UpstreamError
from .base import CallTimeouts, ProviderOptions
from .http import HttpClient, HttpProvider, loads_event, malformed, read_sse


class OpenAIOptions(ProviderOptions):
    base_url: str = "https://api.openai.com/v1"
    api_key: SecretStr | None = None
    auth: Literal["bearer", "api-key", "none"] = "bearer"
    api_version: str | None = Field(None, description="Azure: appended as ?api-version=")
    organization: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    max_connections: int = Field(1000, ge=1)


def _error_message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace").strip() or "no body"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
        if data.get("message"):
            return str(data["message"])[:300]
    return "unrecognised error body"


class OpenAIProvider(HttpProvider):
    type = "openai"
    Options = OpenAIOptions
    options: OpenAIOptions

    def __init__(self, name: str, options: OpenAIOptions) -> None:
        super().__init__(name, options)
        base = options.base_url.rstrip("/")
        query = f"?api-version={options.api_version}" if options.api_version else ""
        self._chat_url = f"{base}/chat/completions{query}"
        self._embed_url = f"{base}/embeddings{query}"
        headers = {"content-type": "application/json", **options.headers}
        key = options.api_key.get_secret_value() if options.api_key else None
        if key and options.auth == "bearer":
            headers["authorization"] = f"Bearer {key}"
        elif key and options.auth == "api-key":
            headers["api-key"] = key
        if options.organization:
            headers["openai-organization"] = options.organization
        self._http = HttpClient(headers, options.max_connections, name, (self._chat_url, self._embed_url))

    def error_message(self, raw: bytes) -> str:
        return _error_message(raw)

    async def chat(self, body: dict[str, Any], timeouts: CallTimeouts) -> dict[str, Any]:
        data = await self.post_json(self._chat_url, body, timeouts)
        if not isinstance(data.get("choices"), list):
            raise malformed(self.name, "response has no 'choices' array")
        return data

    async def embeddings(self, body: dict[str, Any], timeouts: CallTimeouts) -> dict[str, Any]:
        data = await self.post_json(self._embed_url, body, timeouts)
        if not isinstance(data.get("data"), list):
            raise malformed(self.name, "response has no 'data' array")
        return data

    async def stream(self, body: dict[str, Any], timeouts: CallTimeouts) -> AsyncIterator[dict[str, Any]]:
        resp = await self.open_stream(self._chat_url, {**body, "stream": True}, timeouts)
        try:
            async for _event, data in read_sse(resp, self.name, timeouts):
                if data == b"[DONE]":
                    return
                chunk = loads_event(self.name, data)
                if isinstance(chunk, dict) and chunk.get("error"):
                    err = chunk["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise UpstreamError(f"{self.name}: error event in stream: {msg}", retryable=True, kind="stream_error")
                yield chunk
            raise UpstreamError(f"{self.name}: stream ended before [DONE]", retryable=True, kind="truncated")
        finally:
            resp.close()
