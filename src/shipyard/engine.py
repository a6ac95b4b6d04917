"""The engine shared by the server and the library: resolve an alias, call its targets
through the router, account tokens and cost, and record one span per call.

Everything here works on canonical dicts; the server adds HTTP, the library adds
OpenAI SDK objects and a sync wrapper.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable

from .config import Config, load_config
from .errors import GatewayError, NotFound, UpstreamError
from .pricing import cost_usd
from .providers.base import Provider
from .providers.registry import build_provider
from .routing.breaker import CircuitBreaker
from .routing.router import AllTargetsFailed, Attempt, ResolvedTarget, Router
from .store import open_store
from .streaming import StreamAccumulator
from .tracing.observe import current_observation
from .tracing.recorder import Recorder
from .tracing.span import Span, new_span_id, new_trace_id
from .types import ChatRequest, new_completion_id, now, usage_of

log = logging.getLogger("shipyard")


class MidStreamError(GatewayError):
    """The upstream failed after the first chunk was sent: the stream ends with an error event."""

    status = 502
    type = "api_error"


class Engine:
    def __init__(self, config: Any = None, *, store: Any = "config") -> None:
        self.config: Config = load_config(config)
        self.config_hash = self.config.config_hash()
        self.providers: dict[str, Provider] = {
            name: build_provider(name, block) for name, block in self.config.providers.items()
        }
        self.breakers: dict[str, CircuitBreaker] = {}
        self.routers: dict[str, Router] = {
            alias: Router(alias, cfg, self.providers, self.breakers)
            for alias, cfg in self.config.models.items()
        }
        self.store = open_store(self.config.store) if store == "config" else store
        self.recorder = Recorder(self.store, self.config.recording)
        # called with each finished span on the request path (metrics); must be cheap
        self.span_listeners: list[Callable[[Span], None]] = []
        # ---- guards (guards/pipeline.py): input/output checks, each recorded as a guard span
        from .guards.pipeline import GuardManager

        self.guards = GuardManager(self)
        # ---- OTLP export (tracing/otlp_export.py): written spans -> {otlp.endpoint}/v1/traces
        self.otlp_exporter: Any = None
        if self.config.otlp.enabled and self.config.otlp.endpoint:
            from .tracing.otlp_export import OtlpExporter

            self.otlp_exporter = OtlpExporter.for_engine(self)
            self.recorder.add_listener(self.otlp_exporter.submit)
        # ---- end OTLP export
        # ---- releases (releases/): prompts, pinning, experiments, shadow, intent routing, cascades
        from .releases import Releases

        self.releases = Releases(self)
        # ---- cache (cache/): exact and semantic response cache; None unless an alias caches
        from .cache.core import ResponseCache

        self.cache = ResponseCache.for_engine(self)
        # ---- end cache
        self._started = False
        self._start_lock: asyncio.Lock | None = None

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self.recorder.start()
            if self.otlp_exporter is not None:  # OTLP export
                self.otlp_exporter.start()
            await asyncio.gather(*(p.start() for p in self.providers.values()))
            await self.guards.start()
            if self.cache is not None:  # cache
                await self.cache.start()
            self._started = True

    async def close(self) -> None:
        if self.cache is not None:  # cache: finish writes in flight
            await self.cache.close()
        for p in self.providers.values():
            try:
                await p.close()
            except Exception:  # pragma: no cover - best effort on shutdown
                log.exception("closing provider %s failed", p.name)
        self.recorder.close()
        if self.otlp_exporter is not None:  # OTLP export: after the recorder's last batch
            self.otlp_exporter.close()
        if self.store is not None:
            self.store.close()
        self._started = False

    def ready(self) -> dict[str, Any]:
        providers = {name: p.ready() for name, p in self.providers.items()}
        store_ok = self.store.ping() if self.store is not None else True
        return {
            "ready": self._started and store_ok and all(providers.values()),
            "providers": providers,
            "store": store_ok,
        }

    # ---- helpers -------------------------------------------------------------------
    def router_for(self, model: str) -> Router:
        router = self.routers.get(model)
        if router is None:
            available = ", ".join(sorted(self.routers)) or "none configured"
            raise NotFound(
                f"The model '{model}' does not exist. Available models: {available}.",
                param="model",
                code="model_not_found",
            )
        return router

    def new_span(
        self,
        kind: str,
        name: str,
        *,
        trace_id: str | None = None,
        parent_id: str | None = None,
        user: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Span:
        step = current_observation()  # the enclosing @observe step, if any (None: nothing to do)
        if step is not None and trace_id is None:
            trace_id, parent_id = step.trace_id, step.span_id
        span = Span(
            trace_id=trace_id or new_trace_id(),
            span_id=new_span_id(),
            name=name,
            kind=kind,
            parent_id=parent_id,
            user_id=user,
        )
        attrs: dict[str, Any] = {"config_hash": self.config_hash}
        if metadata:
            attrs["metadata"] = metadata
            sid = metadata.get("session_id")
            if isinstance(sid, str):
                span.session_id = sid
        span.attributes = attrs
        if step is not None and step.trace_id == span.trace_id:
            step.adopt(span)  # session/user when the request has none; retrieved document ids
        return span

    def _finish(self, span: Span, target: ResolvedTarget | None, resp: dict[str, Any] | None,
                attempts: list[Attempt]) -> None:
        span.end_time = time.time()
        span.attributes["attempts"] = [a.to_dict() for a in attempts]
        span.attributes["fallbacks"] = max(0, len({(a.provider, a.model) for a in attempts}) - 1)
        if target is not None:
            span.provider = target.provider.name
            span.model = target.model
        if resp is not None:
            span.response_model = resp.get("model") or span.model
            span.completion_id = resp.get("id")
            i, o, c = usage_of(resp)
            span.input_tokens, span.output_tokens, span.cached_tokens = i, o, c
            span.cost_usd = cost_usd(self.config.prices, span.response_model, i, o, c,
                                     fallback_model=span.model)
        for listener in self.span_listeners:
            listener(span)
        self.recorder.record(span)

    def _fail(self, span: Span, exc: BaseException, attempts: list[Attempt],
              target: ResolvedTarget | None = None) -> None:
        span.status = "error"
        if isinstance(exc, GatewayError):
            span.error = exc.message
            span.attributes["http_status"] = exc.status
        elif isinstance(exc, asyncio.CancelledError):
            span.error = "client disconnected; upstream call cancelled"
            span.attributes["http_status"] = 499
        else:
            span.error = f"internal error: {type(exc).__name__}"
            span.attributes["http_status"] = 500
        self._finish(span, target, None, attempts)

    @staticmethod
    def _degrade(span: Span, exc: GatewayError) -> None:
        """Every target failed and the alias's fallback_response is served instead."""
        span.status = "error"
        span.error = exc.message + " (served the alias's fallback_response)"
        span.attributes["fallback_response"] = True

    def _fallback_completion(self, router: Router, req: ChatRequest) -> dict[str, Any]:
        text = router.cfg.fallback_response or ""
        return {
            "id": new_completion_id(),
            "object": "chat.completion",
            "created": now(),
            "model": f"{router.alias}:fallback_response",
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}
                for i in range(req.n)
            ],
            "usage": None,
        }

    @staticmethod
    def _body(req: ChatRequest, target: ResolvedTarget) -> dict[str, Any]:
        body = req.for_target(target.model)
        if target.params:
            body = {**target.params, **body}
        return body

    # ---- chat ----------------------------------------------------------------------
    async def complete(self, req: ChatRequest, span: Span, *, response_model: Any = None) -> dict[str, Any]:
        """A non-streaming chat completion; records ``span``. ``response_model``: a
        pydantic class the answer must validate as (re-asked otherwise)."""
        req, router = await self.releases.resolve(req, span)  # releases: may rewrite req, pick the router
        span.alias = router.alias
        attempts: list[Attempt] = []
        guard = self.guards.begin(router.alias, req, span, response_model)
        if guard is not None:
            early = await self._guard_input(guard, req, span, attempts)
            if early is not None:
                return early
        span.input = req.body
        cached = await self._cache_lookup(req, router, span, attempts)  # cache: before routing
        if cached is not None and cached.hit is not None:
            resp = cached.response()
            self._finish_cached(span, cached, resp)
            return resp

        async def op(target: ResolvedTarget) -> dict[str, Any]:
            return await target.provider.chat(self._body(req, target), target.timeouts)

        try:
            resp, target = await router.execute(op, attempts)
        except AllTargetsFailed as exc:
            if router.cfg.fallback_response is None:
                self._fail(span, exc, attempts)
                raise
            resp = self._fallback_completion(router, req)
            self._degrade(span, exc)
            span.output = resp
            self._finish(span, None, resp, attempts)
            return resp
        except BaseException as exc:
            self._fail(span, exc, attempts)
            raise
        if guard is not None and guard.has_output:
            try:
                resp, target = await guard.run_output(resp, target, self._guard_caller(router, req, attempts))
            except BaseException as exc:
                self._fail(span, exc, attempts, target)
                raise
        span.output = resp
        self._finish(span, target, resp, attempts)
        if cached is not None:  # cache: store the answer (never errors, refusals, fallback_response)
            cached.store(resp, span)
        self.releases.after_success(req, span, resp)  # releases: shadow dispatch, fire and forget
        return resp

    # ---- guards (guards/pipeline.py) -------------------------------------------------
    async def _guard_input(self, guard: Any, req: ChatRequest, span: Span,
                           attempts: list[Attempt]) -> dict[str, Any] | None:
        """Run the input guards (they may redact ``req.body``); a fixed answer when a guard
        falls back, None to go on. Blocks and fail-closed errors raise, recorded."""
        try:
            early = await guard.run_input()
        except BaseException as exc:
            span.input = req.body
            self._fail(span, exc, attempts)
            raise
        if early is not None:
            span.input = req.body
            span.output = early
            self._finish(span, None, early, attempts)
        return early

    def _guard_caller(self, router: Router, req: ChatRequest, attempts: list[Attempt]) -> Callable[..., Any]:
        """For output guards: call the alias again (a re-ask with extra ``messages``), or
        its targets after ``after`` (a fall-back). Non-streaming; attempts are recorded."""
        import copy

        from .guards.pipeline import NoMoreTargets

        async def call(messages: list[dict[str, Any]] | None, after: ResolvedTarget | None) -> Any:
            r = router
            if after is not None:
                rest = router.targets[router.targets.index(after) + 1:] if after in router.targets else []
                if not rest:
                    raise NoMoreTargets()
                r = copy.copy(router)
                r.targets = rest

            async def op(target: ResolvedTarget) -> dict[str, Any]:
                body = self._body(req, target)
                body.pop("stream", None)
                body.pop("stream_options", None)
                if messages is not None:
                    body["messages"] = messages
                return await target.provider.chat(body, target.timeouts)

            return await r.execute(op, attempts)

        return call

    async def open_stream(self, req: ChatRequest, span: Span) -> AsyncIterator[dict[str, Any]]:
        """Start a streaming completion. Failures before the first chunk raise here
        (after falling over); the returned iterator relays the rest and records ``span``."""
        req, router = await self.releases.resolve(req, span)  # releases: may rewrite req, pick the router
        span.alias = router.alias
        span.attributes["stream"] = True
        attempts: list[Attempt] = []
        guard = self.guards.begin(router.alias, req, span)
        if guard is not None:
            early = await self._guard_input(guard, req, span, attempts)
            if early is not None:
                return _replay(early)
        span.input = req.body
        cached = await self._cache_lookup(req, router, span, attempts)  # cache: before routing
        if cached is not None and cached.hit is not None:
            span.ttft_ms = round((time.time() - span.start_time) * 1000, 3)
            return self._replay_cached(req, span, cached)

        async def op(target: ResolvedTarget) -> tuple[Any, dict[str, Any]]:
            body = self._body(req, target)
            body["stream"] = True
            # always ask for usage upstream so cost is known; strip it if the client didn't ask
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            agen = target.provider.stream(body, target.timeouts)
            try:
                first = await agen.__anext__()
            except StopAsyncIteration:
                raise UpstreamError(f"{target.label}: stream ended before any chunk",
                                    retryable=True, kind="truncated") from None
            except BaseException:
                await agen.aclose()
                raise
            return agen, first

        try:
            (agen, first), target = await router.execute(op, attempts)
        except AllTargetsFailed as exc:
            if router.cfg.fallback_response is None:
                self._fail(span, exc, attempts)
                raise
            self._degrade(span, exc)
            return self._fallback_stream(router, req, span, attempts)
        except BaseException as exc:
            self._fail(span, exc, attempts)
            raise
        if guard is not None and guard.has_output:
            # buffer mode consumes the whole upstream here; incremental mode holds back a window
            guarded = guard.wrap_stream(agen, first, target, self._guard_caller(router, req, attempts))
            try:
                first = await guarded.__anext__()
            except BaseException as exc:
                await guarded.aclose()
                self._fail(span, exc if not isinstance(exc, StopAsyncIteration) else
                           MidStreamError("the guarded stream produced no chunk"), attempts, target)
                if isinstance(exc, StopAsyncIteration):
                    raise MidStreamError("the guarded stream produced no chunk") from None
                raise
            agen, target = guarded, guard.final_target or target
        span.ttft_ms = round((time.time() - span.start_time) * 1000, 3)
        return self._relay(agen, first, req, span, target, attempts, cached)

    async def _relay(self, agen: Any, first: dict[str, Any], req: ChatRequest, span: Span,
                     target: ResolvedTarget, attempts: list[Attempt],
                     cached: Any = None) -> AsyncIterator[dict[str, Any]]:
        acc = StreamAccumulator()
        want_usage = req.include_usage
        chunk: dict[str, Any] | None = first
        try:
            while chunk is not None:
                acc.add(chunk)
                if want_usage or "usage" not in chunk:
                    yield chunk
                elif chunk.get("choices") or not chunk.get("usage"):
                    yield {k: v for k, v in chunk.items() if k != "usage"}
                try:
                    chunk = await agen.__anext__()
                except StopAsyncIteration:
                    chunk = None
        except UpstreamError as exc:
            span.output = acc.response()
            err = MidStreamError(
                f"{exc.message} (after {sum(len(c['content']) for c in acc.choices.values())} chunks; "
                "the stream is incomplete)",
                code="upstream_stream_error",
            )
            self._fail(span, err, attempts, target)
            raise err from None
        except BaseException as exc:  # client went away (CancelledError/GeneratorExit)
            await agen.aclose()
            span.output = acc.response()
            self._fail(span, exc if isinstance(exc, Exception) else asyncio.CancelledError(), attempts, target)
            raise
        resp = acc.response()
        span.output = resp
        self._finish(span, target, resp, attempts)
        if cached is not None:  # cache: store the assembled completion
            cached.store(resp, span)
        self.releases.after_success(req, span, resp)  # releases: shadow dispatch, fire and forget

    async def _fallback_stream(self, router: Router, req: ChatRequest, span: Span,
                               attempts: list[Attempt]) -> AsyncIterator[dict[str, Any]]:
        resp = self._fallback_completion(router, req)
        base = {"id": resp["id"], "object": "chat.completion.chunk", "created": resp["created"],
                "model": resp["model"]}
        for c in resp["choices"]:
            i = c["index"]
            yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": c["message"]["content"]},
                                        "finish_reason": None}]}
            yield {**base, "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]}
        span.output = resp
        self._finish(span, None, resp, attempts)

    # ---- cache (cache/) ------------------------------------------------------------
    async def _cache_lookup(self, req: ChatRequest, router: Any, span: Span, attempts: list[Attempt]) -> Any:
        """The request's cache lookup (None: the alias does not cache); a bad
        ``metadata.cache`` is a recorded 400."""
        if self.cache is None:
            return None
        try:
            return await self.cache.lookup(req, router, span)
        except BaseException as exc:
            self._fail(span, exc, attempts)
            raise

    def _finish_cached(self, span: Span, cached: Any, resp: dict[str, Any]) -> None:
        """Record a cache hit: the original's lineage and tokens, cost 0.0 (known to be free)."""
        span.end_time = time.time()
        cached.record_hit(span, resp)
        for listener in self.span_listeners:
            listener(span)
        self.recorder.record(span)

    async def _replay_cached(self, req: ChatRequest, span: Span, cached: Any) -> AsyncIterator[dict[str, Any]]:
        resp = cached.response()
        try:
            for chunk in cached.chunks(resp, req.include_usage):
                yield chunk
        finally:
            self._finish_cached(span, cached, resp)
    # ---- end cache

    # ---- embeddings ----------------------------------------------------------------
    async def embed(self, model: str, body: dict[str, Any], span: Span) -> dict[str, Any]:
        router = self.router_for(model)
        span.alias = router.alias
        span.input = body
        attempts: list[Attempt] = []

        async def op(target: ResolvedTarget) -> dict[str, Any]:
            return await target.provider.embeddings({**body, "model": target.model}, target.timeouts)

        try:
            resp, target = await router.execute(op, attempts)
        except BaseException as exc:
            self._fail(span, exc, attempts)
            raise
        span.output = {"object": "list", "count": len(resp.get("data") or []), "model": resp.get("model")}
        usage = resp.get("usage") or {}
        i = usage.get("prompt_tokens")
        self._finish(span, target, {"model": resp.get("model"), "usage": {"prompt_tokens": i, "completion_tokens": 0 if i is not None else None}}, attempts)
        return resp


async def _replay(resp: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """A finished completion (already recorded) as stream chunks."""
    from .guards.pipeline import completion_chunks

    for chunk in completion_chunks(resp):
        yield chunk
