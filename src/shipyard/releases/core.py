"""The engine's release layer: one ``resolve()`` at the start of a chat call, one
``after_success()`` at its end.

``resolve(req, span)`` settles what a requested model means, in this order:

1. ``prompt:NAME[@LABEL|@VERSION]`` — the version is read from the in-process cache,
   rendered with ``metadata.variables`` and prepended to the client's messages; the request
   now names the version's alias.
2. an intent router (``routers.<name>``) — the request is classified and forwarded to its
   intent's route (an alias, or a ``prompt:`` reference, which goes back to step 1).
3. the alias: an experiment assigns a variant (which may switch alias, target, prompt
   version or parameters), shadow sampling is decided, and an alias with a cascade gets a
   per-request cascade in place of its router.

Every decision goes on the llm span (``prompt``, ``route``, ``experiment``, ``shadow``,
``cascade``) and into a child span of kind ``router``. A request that uses none of this
costs three dict lookups.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import Target
from ..errors import ConfigError, InvalidRequest
from ..routing.router import Router
from ..tracing.span import Span, new_span_id
from ..types import ChatRequest, parse_chat_request
from . import pinning
from .cascade import CascadePlan
from .config import Override
from .experiments import Assigner, outcome_counts
from .intent import IntentRouter
from .prompts import PREFIX, PromptVersion, parse_ref
from .registry import PromptCache, Registry
from .shadow import ShadowJob, ShadowPool
from .store import ReleaseStore

log = logging.getLogger("shipyard.releases")
MAX_HOPS = 4


@dataclass(slots=True)
class ReleaseContext:
    requested: str
    client_body: dict[str, Any]
    variables: dict[str, Any]
    alias: str | None = None
    prompt: dict[str, Any] | None = None
    n_template: int = 0
    shadow: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ResolvedRequest(ChatRequest):
    """A ChatRequest that carries what resolve() decided (read back by after_success)."""

    release: ReleaseContext | None = None


def _carry(req: ChatRequest, ctx: ReleaseContext) -> ResolvedRequest:
    return ResolvedRequest(body=req.body, model=req.model, stream=req.stream, include_usage=req.include_usage,
                           n=req.n, user=req.user, metadata=req.metadata, release=ctx)


def _with_body(req: ChatRequest, body: dict[str, Any]) -> ChatRequest:
    return parse_chat_request(body)


class Releases:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        cfg = engine.config
        self.cfg = cfg.releases
        self.pcfg = cfg.prompts
        self.rstore: ReleaseStore | None = None
        unavailable = None
        if engine.store is None:
            unavailable = "store: none"
        else:
            try:
                self.rstore = ReleaseStore(engine.store)
            except Exception as exc:  # a store that is not SQL, or is down at start-up
                unavailable = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("releases: prompt registry unavailable (%s)", unavailable)
        self.prompts = PromptCache(self.pcfg, self.rstore, unavailable)
        self.registry: Registry | None = None
        if self.rstore is not None:
            self.registry = Registry(self.rstore, self.pcfg, self.prompts, aliases=set(cfg.models) | set(cfg.routers))

        # ---- pinning
        self.pin_warnings = pinning.check(cfg)
        if self.pin_warnings and self.cfg.pinning == "error" and not self.cfg.rewrite_floating:
            raise ConfigError("unpinned models (releases.pinning: error): " + "; ".join(self.pin_warnings))
        self.pin_rewrites = pinning.rewrite(engine) if self.cfg.rewrite_floating else []
        if self.cfg.pinning == "warn":
            for w in self.pin_warnings:
                log.warning("shipyard: %s", w)
        for r in self.pin_rewrites:
            log.warning("shipyard: rewrote floating model name %s (releases.rewrite_floating)", r)
        self.mismatch = pinning.MismatchWatch()
        engine.span_listeners.append(self.mismatch)

        # ---- routing features
        self.intents = {name: IntentRouter(name, rc, engine) for name, rc in cfg.routers.items()}
        self.assigners: dict[str, Assigner] = {}
        self.by_experiment: dict[str, Assigner] = {}
        self.variant_routers: dict[tuple[str, str], Router] = {}
        self.shadow: dict[str, ShadowPool] = {}
        self.cascades: dict[str, CascadePlan] = {}
        for alias, m in cfg.models.items():
            if m.experiment is not None and m.experiment.enabled:
                a = Assigner(alias, m.experiment)
                self.assigners[alias] = self.by_experiment[m.experiment.name] = a
                for v in m.experiment.variants:
                    if v.provider is not None:
                        vcfg = m.model_copy(update={"targets": [Target(provider=v.provider, model=v.model,
                                                                        timeout_s=v.timeout_s)]})
                        self.variant_routers[(alias, v.name)] = Router(alias, vcfg, engine.providers, engine.breakers)
            if m.shadow is not None:
                self.shadow[alias] = ShadowPool(alias, m.shadow, self)
            if m.cascade is not None:
                self.cascades[alias] = CascadePlan(alias, engine.routers[alias], m.cascade, engine)
        self.active = set(self.assigners) | set(self.shadow) | set(self.cascades)
        if self.assigners:
            engine.span_listeners.append(self._observe_experiment)
            if self.rstore is not None:
                engine.recorder.add_listener(self._write_exposures)
        self.shadow_listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self.prompts.warm()

    # ---- the request path -----------------------------------------------------------
    async def resolve(self, req: ChatRequest, span: Span) -> tuple[ChatRequest, Any]:
        """(the request to run, the router to run it with); 404/400 for bad references."""
        model = req.model
        if not model.startswith(PREFIX) and model not in self.intents and model not in self.active:
            return req, self.engine.router_for(model)
        return await self._resolve(req, span)

    def _variables(self, req: ChatRequest) -> dict[str, Any]:
        v = (req.metadata or {}).get(self.pcfg.variables_key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise InvalidRequest(f"Invalid value for 'metadata.{self.pcfg.variables_key}': must be an object of "
                                 "template variables", param=f"metadata.{self.pcfg.variables_key}")
        return v

    async def _resolve(self, req: ChatRequest, span: Span) -> tuple[ChatRequest, Any]:
        t0 = time.time()
        ctx = ReleaseContext(requested=req.model, client_body=req.body, variables={})
        decisions: dict[str, Any] = {}
        model = req.model
        for _ in range(MAX_HOPS):
            if model.startswith(PREFIX):
                if not ctx.variables:
                    ctx.variables = self._variables(req)
                ref = parse_ref(model, self.pcfg.default_label)
                version = await self.prompts.get(ref)
                req = self._render(version, ctx, label=ref.label)
                model = req.model
            elif model in self.intents:
                route, decision = await self.intents[model].classify(req.messages)
                span.attributes["route"] = {k: decision.get(k) for k in ("router", "intent", "score", "method")}
                decisions["route"] = decision
                model = route
                if not route.startswith(PREFIX):
                    req = _with_body(req, {**req.body, "model": route})
            else:
                break
        else:
            raise InvalidRequest(f"Routing '{ctx.requested}' did not settle after {MAX_HOPS} steps "
                                 "(a prompt or router refers back to itself).", param="model", code="routing_loop")
        router: Any = self.engine.router_for(model)
        alias = ctx.alias = router.alias
        a = self.assigners.get(alias)
        if a is not None:
            req, router = await self._experiment(a, req, router, span, ctx, decisions)
        pool = self.shadow.get(alias)
        if pool is not None and (not req.stream or pool.cfg.streams) and pool.sample():
            pool.sampled += 1
            ctx.shadow = True
            span.attributes["shadow"] = decisions["shadow"] = {
                "sampled": True, "candidates": [c.label for c in pool.cfg.candidates]}
        if ctx.prompt is not None:  # the version that runs (an experiment may have swapped it)
            span.attributes["prompt"] = decisions["prompt"] = ctx.prompt
        plan = self.cascades.get(router.alias)
        if plan is not None:
            router = plan.call(span, req, self)
        if decisions:
            self.record_router_span(span, f"route {ctx.requested}", t0,
                                    {"requested": ctx.requested, "alias": router.alias, **decisions})
        return _carry(req, ctx), router

    def _render(self, version: PromptVersion, ctx: ReleaseContext, label: str | None = None,
                client_messages: list[dict[str, Any]] | None = None) -> ChatRequest:
        """The client's request with this prompt version applied: rendered messages first, then
        the client's own; the version's params are defaults (the client's values win)."""
        rendered = version.render(ctx.variables)
        client = ctx.client_body
        messages = client_messages if client_messages is not None else list(client.get("messages") or [])
        body = {**version.params, **{k: v for k, v in client.items() if k not in ("model", "messages")},
                "model": version.model, "messages": rendered + messages}
        rf = version.response_format()
        if rf is not None and client.get("response_format") is None:
            body["response_format"] = rf
        out = parse_chat_request(body)
        ctx.n_template = len(rendered)
        ctx.prompt = {"name": version.name, "version": version.version, "label": label}
        return out

    async def _experiment(self, a: Assigner, req: ChatRequest, router: Any, span: Span, ctx: ReleaseContext,
                          decisions: dict[str, Any]) -> tuple[ChatRequest, Any]:
        cfg = a.cfg
        unit = None
        if cfg.unit == "user":
            unit = req.user or (req.metadata or {}).get("user_id") or span.user_id
        elif cfg.unit == "session":
            unit = span.session_id or (req.metadata or {}).get("session_id")
        unit = unit if isinstance(unit, str) and unit else None
        name, sticky = a.assign(unit)
        v = a.variants[name]
        if v.prompt_label is not None and ctx.prompt is None:
            return req, router  # a prompt variant cannot apply to a request without a prompt: not exposed
        req, router = await self._apply(v, req, router, ctx)
        info = {"name": cfg.name, "variant": name, "unit": cfg.unit if sticky else "request", "sticky": sticky}
        if unit is not None:
            info["unit_key"] = hashlib.sha256(unit.encode()).hexdigest()[:16]
        span.attributes["experiment"] = info
        decisions["experiment"] = {**info, "weights": a.current_weights(), "runs": v.describe()}
        if a.due():
            self._update_weights(a)
        return req, router

    async def _apply(self, o: Override, req: ChatRequest, router: Any, ctx: ReleaseContext) -> tuple[ChatRequest, Any]:
        if o.prompt is not None or o.prompt_label is not None:
            ref = parse_ref(o.prompt) if o.prompt else parse_ref(f"{ctx.prompt['name']}@{o.prompt_label}")  # type: ignore[index]
            if not ctx.variables:
                ctx.variables = self._variables(req)
            version = await self.prompts.get(ref)
            req = self._render(version, ctx, label=ref.label)
            if o.alias is None and o.provider is None:
                router = self.engine.router_for(version.model)
        if o.alias is not None:
            router = self.engine.router_for(o.alias)
            req = _with_body(req, {**req.body, "model": o.alias})
        if o.provider is not None:
            router = self.variant_routers[(ctx.alias, o.name)]  # type: ignore[attr-defined]
        if o.params:
            req = _with_body(req, {**req.body, **o.params})
        return req, router

    def after_success(self, req: ChatRequest, span: Span, resp: dict[str, Any]) -> None:
        """Fire and forget: hand a sampled call to its alias's shadow pool (never blocks)."""
        ctx = getattr(req, "release", None)
        if ctx is None or not ctx.shadow:
            return
        pool = self.shadow.get(ctx.alias or "")
        if pool is None:
            return
        prompt = f"{ctx.prompt['name']}@{ctx.prompt['version']}" if ctx.prompt else None
        job = ShadowJob(ctx.alias or "", req, span.trace_id, span.span_id, resp, span.duration_ms, span.cost_usd,
                        span.response_model, prompt)
        try:
            pool.submit(job)
        except RuntimeError:  # no running loop (cannot happen inside the engine's coroutines)
            pool.dropped += 1

    async def candidate_body(self, req: ChatRequest, c: Override) -> tuple[dict[str, Any], str | None]:
        """The body a shadow candidate gets (no model, no stream), and its prompt version if any."""
        body = {k: v for k, v in req.body.items() if k not in ("metadata", "stream", "stream_options", "model")}
        prompt = None
        ctx = getattr(req, "release", None)
        if c.prompt is not None or c.prompt_label is not None:
            if c.prompt_label is not None and (ctx is None or ctx.prompt is None):
                raise InvalidRequest("this candidate needs a request made with a prompt (prompt_label)")
            ref = parse_ref(c.prompt) if c.prompt else parse_ref(f"{ctx.prompt['name']}@{c.prompt_label}")
            version = await self.prompts.get(ref)
            # the client's turns as production sent them (after any input guard redaction)
            client = list(req.body.get("messages") or [])[ctx.n_template if ctx and ctx.prompt else 0:]
            sub = ReleaseContext(requested="", client_body=ctx.client_body if ctx else req.body,
                                 variables=ctx.variables if ctx else {})
            rendered = self._render(version, sub, client_messages=client)
            body = {k: v for k, v in rendered.body.items() if k not in ("metadata", "stream", "stream_options",
                                                                        "model")}
            prompt = f"{version.name}@{version.version}"
        if c.params:
            body = {**body, **c.params}
        return body, prompt

    # ---- recording --------------------------------------------------------------------
    def record_router_span(self, span: Span, name: str, t0: float, attrs: dict[str, Any]) -> None:
        s = Span(trace_id=span.trace_id, span_id=new_span_id(), name=name, kind="router", parent_id=span.span_id,
                 start_time=t0, end_time=time.time())
        s.user_id, s.session_id = span.user_id, span.session_id
        s.attributes = attrs
        self.engine.recorder.record(s)

    def stored_text(self, text: str) -> str | None:
        rec = self.engine.config.recording
        if not rec.capture_bodies:
            return None
        from ..tracing.redact import Redactor

        red = getattr(self, "_redactor", None)
        if red is None:
            red = self._redactor = Redactor(rec.redact_keys, rec.redact_patterns, rec.max_payload_bytes)
        out = red.redact(text)
        return out if isinstance(out, str) else str(out)

    def shadow_listeners_notify(self, rows: list[dict[str, Any]]) -> None:
        for fn in self.shadow_listeners:
            try:
                fn(rows)
            except Exception:
                log.exception("shadow listener failed")

    # ---- experiments: outcomes and Thompson weights ------------------------------------------
    def _observe_experiment(self, span: Span) -> None:
        exp = span.attributes.get("experiment") if span.kind == "llm" else None
        if exp:
            a = self.by_experiment.get(exp.get("name"))
            if a is not None:
                a.observe(exp.get("variant"), span.status == "ok")

    def _write_exposures(self, spans: list[Span]) -> None:
        rows = []
        for s in spans:
            exp = s.attributes.get("experiment") if s.kind == "llm" and s.attributes else None
            if isinstance(exp, dict) and exp.get("name"):
                rows.append((s.span_id, exp["name"], exp.get("variant"), exp.get("unit_key"), s.trace_id,
                             s.start_time, s.status, s.duration_ms, s.cost_usd))
        if rows and self.rstore is not None:
            self.rstore.insert_exposures(rows)

    def _update_weights(self, a: Assigner) -> None:
        a._updating = True
        rs = self.rstore

        def work() -> None:
            try:
                if rs is not None:
                    try:
                        now = time.time()
                        a.seed = outcome_counts(a.cfg, rs, now - 30 * 86400, now + 60)
                        a.counts = {n: [0, 0] for n in a.names}  # the store now holds them
                    except Exception as exc:
                        log.info("experiment %s: reading outcomes failed (%s)", a.cfg.name, type(exc).__name__)
                a.update_weights()
            finally:
                a._updating = False

        fut = asyncio.get_running_loop().run_in_executor(None, work)
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    # ---- introspection ------------------------------------------------------------------
    async def drain_shadow(self, timeout: float = 30.0) -> bool:
        results = await asyncio.gather(*(p.drain(timeout) for p in self.shadow.values()))
        return all(results)

    def stats(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts.stats(),
            "shadow": {a: p.stats() for a, p in self.shadow.items()},
            "experiments": {a.cfg.name: {"alias": a.alias, "mode": a.cfg.mode, "weights": a.current_weights()}
                            for a in self.assigners.values()},
            "routers": sorted(self.intents),
            "cascades": sorted(self.cascades),
            "pinning": {"warnings": self.pin_warnings, "rewrites": self.pin_rewrites,
                        "mismatches": self.mismatch.mismatches},
        }
