"""Cascades: try the alias's own (cheap) targets first; escalate when the answer fails a check.

Checks, each switchable under ``cascade.escalate_on``: every target of a step failed
(``error``), an empty answer, a refusal (patterns), the provider's content filter, a
truncated answer, invalid JSON when the request asks for JSON (or always), an answer that
does not validate against the request's JSON Schema, a ``regex`` the answer must match,
and a confidence below ``min_confidence`` (the geometric mean of the token probabilities
from logprobs, which the cascade then requests from every step but the last).

Streams are buffered per step (a step's answer must be checked before any of it is
sent), so a cascaded stream's first token arrives when the accepted step has finished.

:class:`CascadePlan` is built once per alias; :class:`CascadeCall` is a per-request
stand-in for the alias's :class:`~shipyard.routing.router.Router` (same ``execute``
contract), so the engine runs a cascade without knowing it is one.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..config import Target
from ..errors import GatewayError, UpstreamError
from ..routing.router import AllTargetsFailed, Attempt, ResolvedTarget, Router
from ..streaming import StreamAccumulator
from ..tracing.span import Span
from .config import CascadeConfig
from .evaluators import answer_text, parse_json


class CascadePlan:
    def __init__(self, alias: str, base: Router, cfg: CascadeConfig, engine: Any) -> None:
        self.alias = alias
        self.cfg = cfg
        self.engine = engine
        routers: list[Router] = [base]
        labels = [f"alias {alias}"]
        for s in cfg.escalate_to:
            if s.alias is not None:
                routers.append(engine.routers[s.alias])
            else:
                acfg = base.cfg.model_copy(update={"targets": [Target(provider=s.provider, model=s.model,
                                                                       params=dict(s.params), timeout_s=s.timeout_s)]})
                routers.append(Router(alias, acfg, engine.providers, engine.breakers))
            labels.append(s.describe())
        self.wants_logprobs = cfg.escalate_on.min_confidence is not None
        if self.wants_logprobs:
            routers = [self._with_logprobs(r) if i < len(routers) - 1 else r for i, r in enumerate(routers)]
        self.steps = routers
        self.labels = labels
        self.refusals = [re.compile(p) for p in cfg.refusal_patterns]
        self.regex = re.compile(cfg.escalate_on.regex, re.DOTALL) if cfg.escalate_on.regex else None

    @staticmethod
    def _with_logprobs(r: Router) -> Router:
        import copy

        c = copy.copy(r)
        c.targets = [dataclasses.replace(t, params={**t.params, "logprobs": True}) for t in r.targets]
        return c

    def call(self, span: Span, req: Any, releases: Any) -> CascadeCall:
        return CascadeCall(self, span, req, releases)

    # ---- checks ----------------------------------------------------------------------
    def check(self, resp: dict[str, Any], req: Any) -> tuple[str | None, float | None]:
        """(reason to escalate or None, confidence or None)."""
        on = self.cfg.escalate_on
        choices = resp.get("choices") or []
        choice = choices[0] if choices else {}
        msg = choice.get("message") or {}
        finish = choice.get("finish_reason")
        has_tools = bool(msg.get("tool_calls"))
        text = answer_text(resp) if not has_tools else ""
        if on.content_filter and finish == "content_filter":
            return "stopped by the provider's content filter", None
        if on.truncated and finish == "length":
            return "truncated (finish_reason: length)", None
        if on.empty and not has_tools and not text.strip():
            return "empty answer", None
        if on.refusal and not has_tools and (msg.get("refusal") or any(rx.search(text) for rx in self.refusals)):
            return "refusal", None
        rf = req.body.get("response_format") if isinstance(req.body.get("response_format"), dict) else None
        wants_json = on.json_ is True or (on.json_ == "auto" and rf is not None
                                          and rf.get("type") in ("json_object", "json_schema"))
        if wants_json and not has_tools:
            ok, value = parse_json(text)
            if not ok:
                return "answer is not valid JSON", None
            schema = ((rf or {}).get("json_schema") or {}).get("schema") if rf else None
            if on.schema_ and isinstance(schema, dict):
                err = _schema_error(schema, value)
                if err:
                    return f"answer does not match the response schema: {err}", None
        if self.regex is not None and not has_tools and not self.regex.search(text):
            return f"answer does not match /{self.regex.pattern}/", None
        conf = confidence(choice)
        if on.min_confidence is not None and conf is not None and conf < on.min_confidence:
            return f"low confidence {conf:.3f} < {on.min_confidence}", conf
        return None, conf


def _schema_error(schema: dict[str, Any], value: Any) -> str | None:
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover
        return None
    try:
        err = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(value))
    except Exception:
        return None
    return None if err is None else err.message[:200]


def confidence(choice: dict[str, Any]) -> float | None:
    """exp(mean token logprob) of a choice, None when the provider sent no logprobs."""
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    vals = [t.get("logprob") for t in content or [] if isinstance(t, dict) and isinstance(t.get("logprob"), (int, float))]
    if not vals:
        return None
    return round(math.exp(sum(vals) / len(vals)), 6)


def _assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    acc = StreamAccumulator()
    logprobs: dict[int, list[Any]] = {}
    for c in chunks:
        acc.add(c)
        for ch in c.get("choices") or ():
            lp = ch.get("logprobs")
            if isinstance(lp, dict) and lp.get("content"):
                logprobs.setdefault(ch.get("index", 0), []).extend(lp["content"])
    resp = acc.response()
    for ch in resp.get("choices") or []:
        if ch.get("index", 0) in logprobs:
            ch["logprobs"] = {"content": logprobs[ch.get("index", 0)]}
    return resp


async def _replay(chunks: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for c in chunks:
        yield c


def _strip_logprobs(obj: dict[str, Any]) -> None:
    for ch in obj.get("choices") or []:
        if isinstance(ch, dict) and "logprobs" in ch:
            ch["logprobs"] = None


class CascadeCall:
    """Router-shaped: ``alias``, ``cfg``, ``targets``, ``execute(op, attempts)``, ``failure``."""

    def __init__(self, plan: CascadePlan, span: Span, req: Any, releases: Any) -> None:
        self.plan = plan
        self.span = span
        self.req = req
        self.releases = releases
        base = plan.steps[0]
        self.alias = base.alias
        self.cfg = base.cfg
        self.targets: list[ResolvedTarget] = [t for r in plan.steps for t in r.targets]
        self._all = self.targets

    def failure(self, attempts: list[Attempt]) -> AllTargetsFailed:
        return Router.failure(self, attempts)  # type: ignore[arg-type]

    async def execute(self, op: Callable[[ResolvedTarget], Awaitable[Any]],
                      attempts: list[Attempt]) -> tuple[Any, ResolvedTarget]:
        if self.targets is not self._all:  # a guard falling back to "the targets after X": plain routing
            return await Router.execute(self, op, attempts)  # type: ignore[arg-type]
        plan, on = self.plan, self.plan.cfg.escalate_on
        steps: list[dict[str, Any]] = []
        t0 = time.time()
        client_logprobs = bool(self.req.body.get("logprobs"))
        last = len(plan.steps) - 1
        try:
            for i, router in enumerate(plan.steps):
                p0 = time.perf_counter()
                entry: dict[str, Any] = {"step": i, "runs": plan.labels[i]}
                steps.append(entry)
                try:
                    result, target = await router.execute(op, attempts)
                    chunks = None
                    if isinstance(result, tuple):  # a stream: (iterator, first chunk) -> buffer it
                        agen, first = result
                        chunks = [first]
                        try:
                            async for c in agen:
                                chunks.append(c)
                        finally:
                            await agen.aclose()
                        resp = _assemble(chunks)
                    else:
                        resp = result
                except AllTargetsFailed as exc:
                    entry.update(outcome="error", reason=exc.message[:300],
                                 ms=round((time.perf_counter() - p0) * 1000, 3))
                    if i == last or not on.error:
                        raise
                    continue
                except UpstreamError as exc:  # mid-stream failure while buffering
                    entry.update(outcome="error", reason=exc.message[:300],
                                 ms=round((time.perf_counter() - p0) * 1000, 3))
                    if i == last or not on.error:
                        raise GatewayError(f"{exc.message} (cascade step {i}, stream incomplete)", status=502,
                                           code="upstream_stream_error") from None
                    continue
                reason, conf = plan.check(resp, self.req)
                entry.update(target=target.label, ms=round((time.perf_counter() - p0) * 1000, 3))
                if conf is not None:
                    entry["confidence"] = conf
                if reason is not None and i < last:
                    entry.update(outcome="escalated", reason=reason)
                    continue
                entry["outcome"] = "accepted" if reason is None else "accepted_unchecked"
                if reason is not None:
                    entry["reason"] = reason
                if plan.wants_logprobs and not client_logprobs:
                    if chunks is not None:
                        for c in chunks:
                            _strip_logprobs(c)
                    else:
                        _strip_logprobs(resp)
                return ((_replay(chunks[1:]), chunks[0]) if chunks is not None else resp), target
            raise AssertionError("unreachable")
        finally:
            self._record(steps, t0)

    def _record(self, steps: list[dict[str, Any]], t0: float) -> None:
        final = steps[-1] if steps else {}
        summary = {"steps": steps, "final_step": final.get("step"), "escalated": len(steps) > 1,
                   "outcome": final.get("outcome")}
        self.span.attributes["cascade"] = summary
        self.releases.record_router_span(self.span, f"cascade {self.alias}", t0, {"cascade": summary})
