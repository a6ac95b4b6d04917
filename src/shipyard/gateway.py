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
        **params: Any,
    ) -> Any:
        """A chat completion. With ``stream=True`` returns an async iterator of chunks."""
        await self.engine.start()
        req = parse_chat_request({"model": model, "messages": messages, **params})
        span = self.engine.new_span("llm", "chat " + req.model, trace_id=trace_id,
                                    parent_id=parent_span_id, user=req.user, metadata=req.metadata)
        if not req.stream:
            return _completion(await self.engine.complete(req, span), span.trace_id)
        chunks = await self.engine.open_stream(req, span)

        async def objects() -> AsyncIterator[Any]:
            async for c in chunks:
                yield _chunk(c, span.trace_id)

        return objects()

    async def aembeddings(self, *, model: str, input: Any, **params: Any) -> Any:
        from openai.types import CreateEmbeddingResponse

        await self.engine.start()
        model, _, body = parse_embeddings_request({"model": model, "input": input, **params})
        span = self.engine.new_span("embedding", "embeddings " + model, user=params.get("user"))
        return CreateEmbeddingResponse.model_validate(await self.engine.embed(model, body, span))

    async def aclose(self) -> None:
        await self.engine.close()

    async def __aenter__(self) -> "Gateway":
        await self.engine.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ---- sync ----------------------------------------------------------------------
    def _sync(self) -> _LoopThread:
        if self._loop_thread is None:
            self._loop_thread = _LoopThread()
        return self._loop_thread

    def chat(self, **kwargs: Any) -> Any:
        """Sync ``achat``; with ``stream=True`` returns an iterator of chunks."""
        lt = self._sync()
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

    def close(self) -> None:
        if self._loop_thread is not None:
            self._loop_thread.run(self.aclose())
            self._loop_thread.stop()
            self._loop_thread = None
        else:
            self.engine.recorder.close()
            if self.engine.store is not None:
                self.engine.store.close()

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
