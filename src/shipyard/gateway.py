"""The library face: ``Gateway`` with async and sync ``chat`` returning OpenAI SDK objects.

It runs the same engine, config and recording as ``shipyard serve``. An instance is used
either from async code (``await gw.achat(...)``, on the caller's loop) or from sync code
(``gw.chat(...)``, on a private loop thread) — not both.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Iterator

from .engine import Engine
from .tracing.observe import current_observation, register_default_recorder, unregister_default_recorder
from .types import parse_chat_request, parse_embeddings_request


def _completion(resp: dict[str, Any], trace_id: str) -> Any:
    from openai.types.chat import ChatCompletion

    obj = ChatCompletion.model_validate(resp)
    obj.trace_id = trace_id  # extra attribute: the trace to address feedback to
    return obj


def _chunk(chunk: dict[str, Any], trace_id: str) -> Any:
    from openai.types.chat import ChatCompletionChunk

    obj = ChatCompletionChunk.model_validate(chunk)
    obj.trace_id = trace_id
    return obj


def _with_response_format(model_cls: Any, params: dict[str, Any]) -> dict[str, Any]:
    from pydantic import BaseModel

    from .errors import InvalidRequest

    if not (isinstance(model_cls, type) and issubclass(model_cls, BaseModel)):
        raise InvalidRequest("response_model must be a pydantic BaseModel subclass", param="response_model")
    if params.get("stream"):
        raise InvalidRequest("response_model cannot be combined with stream=True", param="response_model")
    if params.get("response_format") is None:
        params = {**params, "response_format": {"type": "json_schema", "json_schema": {
            "name": model_cls.__name__[:64], "schema": model_cls.model_json_schema()}}}
    return params


def _validated(model_cls: Any, resp: dict[str, Any], trace_id: str) -> Any:
    """The first choice's content as a ``model_cls`` instance (the engine already re-asked)."""
    from pydantic import ValidationError

    from .errors import GatewayError
    from .guards.structured import unfence

    choices = resp.get("choices") or [{}]
    content = (choices[0].get("message") or {}).get("content")
    try:
        return model_cls.model_validate_json(unfence(content or ""))
    except ValidationError as exc:
        raise GatewayError(f"The answer does not validate as {model_cls.__name__}: {exc.errors()[0]['msg']} "
                           f"(trace {trace_id}).", status=502, code="output_validation_failed",
                           details={"trace_id": trace_id}) from None


class _LoopThread:
    """A private event loop in a daemon thread, for the sync API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="shipyard-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Gateway:
    """``Gateway(config)`` where config is a YAML path, a dict, or None for the embedded default."""

    def __init__(self, config: Any = None, *, store: Any = "config") -> None:
        self.engine = Engine(config, store=store)
        self._loop_thread: _LoopThread | None = None
        self._loop_lock = threading.Lock()  # sync calls may come from several threads at once
        # the most recently created Gateway records @observe spans (unless shipyard.configure)
        register_default_recorder(self.engine.recorder, self)

    @property
    def config(self):
        return self.engine.config

    # ---- async ---------------------------------------------------------------------
    async def achat(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        trace_id: str | None = None,
        parent_span_id: str | None = None,
        response_model: Any = None,
        **params: Any,
    ) -> Any:
        """A chat completion. With ``stream=True`` returns an async iterator of chunks.

        ``response_model``: a pydantic model class; the request asks for its JSON Schema
        (``response_format``), the answer is validated (re-asked on failure, see
        docs/guardrails.md) and a validated instance of the class is returned."""
        await self.engine.start()
        if response_model is not None:
            params = _with_response_format(response_model, params)
        req = parse_chat_request({"model": model, "messages": messages, **params})
        span = self.engine.new_span("llm", "chat " + req.model, trace_id=trace_id,
                                    parent_id=parent_span_id, user=req.user, metadata=req.metadata)
        if response_model is not None:
            resp = await self.engine.complete(req, span, response_model=response_model)
            return _validated(response_model, resp, span.trace_id)
        if not req.stream:
            return _completion(await self.engine.complete(req, span), span.trace_id)
        chunks = await self.engine.open_stream(req, span)

        async def objects() -> AsyncIterator[Any]:
            try:
                async for c in chunks:
                    yield _chunk(c, span.trace_id)
            finally:  # closing early cancels the upstream call now, not at garbage collection
                await chunks.aclose()

        return objects()

    async def aembeddings(self, *, model: str, input: Any, **params: Any) -> Any:
        from openai.types import CreateEmbeddingResponse

        await self.engine.start()
        model, _, body = parse_embeddings_request({"model": model, "input": input, **params})
        span = self.engine.new_span("embedding", "embeddings " + model, user=params.get("user"))
        return CreateEmbeddingResponse.model_validate(await self.engine.embed(model, body, span))

    async def aclose(self) -> None:
        unregister_default_recorder(self.engine.recorder)
        await self.engine.close()

    async def __aenter__(self) -> "Gateway":
        await self.engine.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ---- sync ----------------------------------------------------------------------
    def _sync(self) -> _LoopThread:
        with self._loop_lock:
            if self._loop_thread is None:
                self._loop_thread = _LoopThread()
            return self._loop_thread

    def chat(self, **kwargs: Any) -> Any:
        """Sync ``achat``; with ``stream=True`` returns an iterator of chunks."""
        lt = self._sync()
        step = current_observation()  # runs on the loop thread: carry the caller's step across
        if step is not None and kwargs.get("trace_id") is None:
            kwargs = {**kwargs, "trace_id": step.trace_id, "parent_span_id": step.span_id}
        result = lt.run(self.achat(**kwargs))
        if not kwargs.get("stream"):
            return result
        return self._iterate(lt, result)

    @staticmethod
    def _iterate(lt: _LoopThread, agen: AsyncIterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield lt.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            lt.run(agen.aclose())

    def embeddings(self, **kwargs: Any) -> Any:
        return self._sync().run(self.aembeddings(**kwargs))

    # ---- feedback (docs/feedback.md) -----------------------------------------------
    def feedback(self, trace_id: str | None = None, *, kind: str, value: Any = None, completion_id: str | None = None,
                 span_id: str | None = None, text: str | None = None, label: str | None = None,
                 scale: list[float] | None = None, source: str = "end_user", user_id: str | None = None,
                 session_id: str | None = None, metadata: dict[str, Any] | None = None,
                 idempotency_key: str | None = None) -> dict[str, Any]:
        """Record feedback on a call, addressed by ``trace_id`` (``resp.trace_id``) or
        ``completion_id`` (``resp.id``): ``kind`` thumbs (value "up"/"down"), score, label,
        comment, correction, accepted, edited, ignored, regenerated or copied. Returns the
        stored event (``duplicate: True`` when ``idempotency_key`` was already used).
        Blocking (a store write); from async code use ``afeedback``."""
        from .feedback.model import parse_feedback
        from .feedback.service import service_for

        body = {"trace_id": trace_id, "completion_id": completion_id, "span_id": span_id, "kind": kind,
                "value": value, "text": text, "label": label, "scale": scale, "source": source, "user_id": user_id,
                "session_id": session_id, "metadata": metadata, "idempotency_key": idempotency_key}
        fb = parse_feedback({k: v for k, v in body.items() if v is not None})
        row, _ = service_for(self.engine).record(fb, "library")
        return row

    async def afeedback(self, trace_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """``feedback`` from async code (the store write runs in a worker thread)."""
        return await asyncio.to_thread(lambda: self.feedback(trace_id, **kwargs))

    def close(self) -> None:
        if self._loop_thread is not None:
            self._loop_thread.run(self.aclose())
            self._loop_thread.stop()
            self._loop_thread = None
        else:
            unregister_default_recorder(self.engine.recorder)
            self.engine.recorder.close()
            if self.engine.store is not None:
                self.engine.store.close()

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
