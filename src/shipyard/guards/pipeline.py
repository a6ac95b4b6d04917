"""Running guards around one call: input checks, output checks with re-ask and fall-back,
guarded streams, and one ``guard`` span per run.

The engine asks :class:`GuardManager` for a :class:`RequestGuards` per call (``None`` when
nothing applies, the fast path). ``run_input`` may rewrite the request (redaction), block
it, or answer it with a fixed response. ``run_output`` checks every choice and then acts:
redact/mask in place, re-ask the model with the validation error (up to ``max_attempts``),
fall back (remaining targets of the alias, then a fixed response), block (the choice's
``finish_reason`` becomes ``content_filter`` and its content a refusal), or only flag.

Each guard run is recorded as a span of kind ``guard`` (child of the llm span) with its
decision, score, action taken and latency; the llm span's ``guard_decisions`` attribute
lists them all. A guard that raises or times out follows ``on_error``: ``fail_open``
records the error and goes on, ``fail_closed`` answers 503 ``guard_unavailable``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

from ..errors import ConfigError, GatewayError, InvalidRequest, UpstreamError
from ..streaming import StreamAccumulator
from ..tracing.span import Span, new_span_id
from ..types import new_completion_id, now
from .base import Guard, GuardContext, Verdict
from .registry import GuardSpecError, build_guard, names
from .structured import request_schema

# guards a client may add per request unless the alias says otherwise: cheap, local, and
# unable to run arbitrary patterns or spend money
DEFAULT_REQUEST_GUARDS = ("prompt_injection", "pii", "banned_topics", "max_tokens", "json", "json_schema",
                          "toxicity", "groundedness")
REQUEST_KEYS = frozenset({"input", "output", "disable", "context"})
ACTION_TAKEN = {"block": "blocked", "redact": "redacted", "mask": "masked", "reask": "reask",
                "fallback": "fallback", "flag": "flagged"}

Caller = Callable[[list[dict[str, Any]] | None, Any], Awaitable[tuple[dict[str, Any], Any]]]


# --------------------------------------------------------------------------- errors
class GuardBlocked(InvalidRequest):
    """A guard with ``action: block`` refused the request or stopped the answer (400, the
    guard's block code, e.g. ``content_filter``)."""

    def __init__(self, message: str, cg: Compiled, v: Verdict, trace_id: str, param: str | None = None) -> None:
        super().__init__(message, code=cg.guard.block_code, param=param,
                         details={"guard": cg.id, "type": cg.guard.name, "stage": cg.stage, "score": v.score,
                                  "trace_id": trace_id})


class GuardUnavailable(GatewayError):
    """A guard crashed or timed out under ``on_error: fail_closed`` (503 ``guard_unavailable``)."""

    status = 503

    def __init__(self, message: str, cg: Compiled) -> None:
        super().__init__(message, code="guard_unavailable", details={"guard": cg.id, "stage": cg.stage})


class OutputValidationFailed(GatewayError):
    """Structured output still failed after every re-ask and fall-back (502)."""

    status = 502

    def __init__(self, cg: Compiled, v: Verdict, trace_id: str) -> None:
        super().__init__(
            f"The model's output failed the '{cg.id}' check after {cg.guard.options.max_attempts} re-ask(s) and every "
            f"fallback: {v.reason}.", code="output_validation_failed",
            details={"guard": cg.id, "type": cg.guard.name, "stage": "output", "trace_id": trace_id})


class NoMoreTargets(Exception):
    pass


# --------------------------------------------------------------------------- compiled guards
@dataclass(slots=True)
class Compiled:
    guard: Guard
    stage: str
    timeout_s: float
    on_error: str
    source: str = "config"  # config | request | implicit

    @property
    def id(self) -> str:
        return self.guard.id

    @property
    def action(self) -> str:
        return self.guard.action

    @property
    def enforced(self) -> bool:
        return self.guard.options.enforced

    @property
    def structured(self) -> bool:
        return getattr(self.guard, "structured", False)

    @property
    def waits(self) -> bool:
        """Runs off the request path (thread or network), so it gets a timeout."""
        return self.guard.threaded or getattr(self.guard, "asynchronous", False) or self.guard.name == "llm_judge"


def _stage_list(specs: list[Any], stage: str, where: str, defs: dict[str, Any]) -> list[Any]:
    out = []
    for i, spec in enumerate(specs):
        path = f"{where}.{stage}[{i}]"
        if isinstance(spec, str) and spec in defs:
            spec = defs[spec]
        elif isinstance(spec, dict) and isinstance(spec.get("use"), str):
            ref = spec["use"]
            if ref not in defs:
                raise GuardSpecError(f"{path}.use", f"no guard named {ref!r} under the top-level 'guards' "
                                                     f"(defined: {', '.join(sorted(defs)) or 'none'})")
            spec = {**defs[ref], **{k: v for k, v in spec.items() if k != "use"}}
        out.append((path, spec))
    return out


class AliasGuards:
    """One alias's guards, validated and compiled at start-up."""

    def __init__(self, alias: str, cfg: Any, defs: dict[str, Any], aliases: set[str]) -> None:
        self.alias = alias
        self.cfg = cfg
        where = f"models.{alias}.guards"
        self.timeout_s = cfg.timeout_ms / 1000.0
        self.input = [self._compile(p, s, "input", aliases) for p, s in _stage_list(cfg.input, "input", where, defs)]
        self.output = [self._compile(p, s, "output", aliases) for p, s in _stage_list(cfg.output, "output", where, defs)]
        for stage in (self.input, self.output):
            ids = [c.id for c in stage]
            dup = {i for i in ids if ids.count(i) > 1}
            if dup:
                raise GuardSpecError(where, f"two guards share the id {sorted(dup)[0]!r}; give one an 'id'")
        allowed = cfg.request_guards if cfg.request_guards is not None else DEFAULT_REQUEST_GUARDS
        unknown = [n for n in allowed if n not in names()]
        if unknown:
            raise GuardSpecError(f"{where}.request_guards", f"unknown guard {unknown[0]!r}")
        self.request_guards = frozenset(allowed)

    def _compile(self, path: str, spec: Any, stage: str, aliases: set[str], source: str = "config",
                 client: bool = False) -> Compiled:
        g = build_guard(spec, stage, path, client=client)  # type: ignore[arg-type]
        if g.name == "llm_judge":
            target = g.options.alias  # type: ignore[attr-defined]
            if target not in aliases:
                raise GuardSpecError(f"{path}.alias", f"unknown model alias {target!r}")
            if target == self.alias:
                raise GuardSpecError(f"{path}.alias", "a judge cannot be the alias it guards")
        o = g.options
        timeout_ms = o.timeout_ms or g.default_timeout_ms or self.cfg.timeout_ms
        return Compiled(g, stage, timeout_ms / 1000.0, o.on_error or self.cfg.on_error, source)

    @property
    def guards(self) -> list[Compiled]:
        return self.input + self.output


class GuardManager:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        cfg = engine.config
        defs = dict(getattr(cfg, "guards", {}) or {})
        aliases = set(cfg.models)
        self.by_alias: dict[str, AliasGuards] = {}
        for alias, m in cfg.models.items():
            try:
                self.by_alias[alias] = AliasGuards(alias, m.guards, defs, aliases)
            except GuardSpecError as exc:
                raise ConfigError(f"invalid configuration: {exc}") from None

    async def start(self) -> None:
        await asyncio.gather(*(c.guard.start(self.engine) for ag in self.by_alias.values() for c in ag.guards))

    def begin(self, alias: str, req: Any, span: Span, response_model: Any = None) -> "RequestGuards | None":
        # the router's alias; a release may route to a router whose alias is not configured
        # (a pinned target), then the guards of the alias the client asked for apply
        ag = self.by_alias.get(alias) or self.by_alias.get(req.model)
        if ag is None:
            return None
        spec = req.metadata.get("guards") if req.metadata else None
        fmt, _schema = request_schema(req.body)
        if not ag.input and not ag.output and spec is None and fmt is None and response_model is None:
            return None
        inputs, outputs = list(ag.input), list(ag.output)
        context: list[str] | None = None
        if spec is not None:
            add_in, add_out, disable, context = parse_request_guards(spec, ag, set(self.engine.config.models))
            if disable:
                inputs = [c for c in inputs if ("input", c.id) not in disable]
                outputs = [c for c in outputs if ("output", c.id) not in disable]
            inputs += add_in
            outputs += add_out
        explicit_output = bool(outputs)
        if response_model is not None:
            from .structured import PydanticGuard

            opts = PydanticGuard.Options.model_validate(
                {"name": "pydantic", "id": "response_model", "max_attempts": ag.cfg.structured_output_attempts})
            outputs.append(Compiled(PydanticGuard(opts, "output", model_cls=response_model), "output",
                                    ag.timeout_s, ag.cfg.on_error, "implicit"))
        elif fmt is not None and ag.cfg.structured_output != "off" and not any(c.structured for c in outputs):
            action = "reask" if ag.cfg.structured_output == "reask" else "flag"
            g = build_guard({"name": "json_schema", "id": "response_format", "action": action,
                             "max_attempts": ag.cfg.structured_output_attempts}, "output", "response_format")
            outputs.append(Compiled(g, "output", ag.timeout_s, ag.cfg.on_error, "implicit"))
        if not inputs and not outputs:
            return None
        return RequestGuards(self.engine, ag, req, span, inputs, outputs, context, explicit_output)


def parse_request_guards(raw: Any, ag: AliasGuards, aliases: set[str]
                         ) -> tuple[list[Compiled], list[Compiled], set[tuple[str, str]], list[str] | None]:
    """``metadata.guards`` -> (added input guards, added output guards, disabled (stage, id), context).

    ``disable`` names guard ids, optionally qualified by stage (``input.toxicity``); an
    unqualified id means that id on both stages."""
    base = "metadata.guards"
    if isinstance(raw, str):  # SDKs that type metadata as str -> str can send it as JSON text
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise InvalidRequest(f"Invalid value for '{base}': not valid JSON", param=base, code="invalid_value") from None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"Invalid value for '{base}': must be an object", param=base, code="invalid_value")
    for k in raw:
        if k not in REQUEST_KEYS:
            raise InvalidRequest(f"Invalid value for '{base}.{k}': unknown key (use {', '.join(sorted(REQUEST_KEYS))})",
                                 param=f"{base}.{k}", code="invalid_value")
    added: dict[str, list[Compiled]] = {"input": [], "output": []}
    existing = {c.id for c in ag.guards}
    for stage in ("input", "output"):
        specs = raw.get(stage) or []
        if not isinstance(specs, list):
            raise InvalidRequest(f"Invalid value for '{base}.{stage}': must be an array", param=f"{base}.{stage}",
                                 code="invalid_value")
        for i, spec in enumerate(specs):
            path = f"{base}.{stage}[{i}]"
            name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None
            if isinstance(name, str) and name not in ag.request_guards:
                raise InvalidRequest(
                    f"Invalid value for '{path}.name': the guard {name!r} cannot be added per request on model "
                    f"'{ag.alias}' (allowed: {', '.join(sorted(ag.request_guards)) or 'none'})",
                    param=f"{path}.name", code="guard_not_allowed")
            try:
                c = ag._compile(path, spec, stage, aliases, source="request", client=True)
            except GuardSpecError as exc:
                raise InvalidRequest(f"Invalid value for '{exc.path}': {exc.message}", param=exc.path,
                                     code="invalid_value") from None
            if c.id in existing:
                c.guard.id = f"{c.id}#request"
            added[stage].append(c)
    disable = raw.get("disable") or []
    if not isinstance(disable, list) or not all(isinstance(d, str) for d in disable):
        raise InvalidRequest(f"Invalid value for '{base}.disable': must be an array of guard ids",
                             param=f"{base}.disable", code="invalid_value")
    off: set[tuple[str, str]] = set()
    for d in disable:
        stage, dot, gid = d.partition(".")
        if not dot or stage not in ("input", "output"):
            stage, gid = "", d
        hits = [c for c in ag.guards if c.id == gid and (not stage or c.stage == stage)]
        if not hits:
            known = sorted(f"{c.stage}.{c.id}" for c in ag.guards)
            raise InvalidRequest(f"Invalid value for '{base}.disable': model '{ag.alias}' has no guard {d!r} "
                                 f"(its guards: {', '.join(known) or 'none'})",
                                 param=f"{base}.disable", code="invalid_value")
        for c in hits:
            if c.enforced:
                raise InvalidRequest(f"The {c.stage} guard {c.id!r} on model '{ag.alias}' is enforced by the operator "
                                     "and cannot be disabled per request.", param=f"{base}.disable",
                                     code="guard_enforced")
            off.add((c.stage, c.id))
    context = raw.get("context")
    if context is not None:
        if isinstance(context, str):
            context = [context]
        elif not (isinstance(context, list) and all(isinstance(x, str) for x in context)):
            raise InvalidRequest(f"Invalid value for '{base}.context': must be a string or an array of strings",
                                 param=f"{base}.context", code="invalid_value")
    return added["input"], added["output"], off, context


# --------------------------------------------------------------------------- one request
@dataclass(slots=True)
class _Outcome:
    kind: str  # ok | reask | fallback
    resp: dict[str, Any]
    guard: Compiled | None = None
    verdict: Verdict | None = None
    text: str | None = None  # the failing answer, for a re-ask


@dataclass(slots=True)
class _ChoiceState:
    pending: str = ""
    raw: str = ""  # everything checked so far (before redaction)
    done: bool = False  # its finish_reason was seen


@dataclass(slots=True)
class _StreamStat:
    runs: int = 0
    fails: int = 0
    score: float | None = None
    ms: float = 0.0
    start: float = field(default_factory=time.time)
    verdict: Verdict | None = None
    error: str | None = None


class RequestGuards:
    def __init__(self, engine: Any, ag: AliasGuards, req: Any, span: Span, inputs: list[Compiled],
                 outputs: list[Compiled], context: list[str] | None, explicit_output: bool) -> None:
        self.engine = engine
        self.ag = ag
        self.req = req
        self.span = span
        self.input = inputs
        self.output = outputs
        self.context = context
        self.explicit_output = explicit_output
        self.decisions: list[dict[str, Any]] = span.attributes.setdefault("guard_decisions", [])
        self.final_target: Any = None
        self._usage: list[dict[str, Any]] = []

    @property
    def has_output(self) -> bool:
        return bool(self.output)

    # ---- running one guard ----------------------------------------------------------
    def _ctx(self, stage: str, cg: Compiled, span_id: str) -> GuardContext:
        return GuardContext(stage=stage, alias=self.ag.alias, body=self.req.body, metadata=self.req.metadata,  # type: ignore[arg-type]
                            action=cg.action, engine=self.engine, trace_id=self.span.trace_id,
                            parent_span_id=span_id, context_docs=self.context)

    async def _run(self, cg: Compiled, fn: Callable[[GuardContext], Awaitable[Verdict]]
                   ) -> tuple[Verdict | None, str | None, float, float, str]:
        span_id = new_span_id()
        ctx = self._ctx(cg.stage, cg, span_id)
        start, t0 = time.time(), time.perf_counter()
        verdict: Verdict | None = None
        err: str | None = None
        try:
            if cg.waits:
                verdict = await asyncio.wait_for(fn(ctx), cg.timeout_s)
            else:
                verdict = await fn(ctx)
        except asyncio.TimeoutError:
            err = f"timed out after {round(cg.timeout_s * 1000)} ms"
        except GatewayError as exc:
            err = exc.message
        except Exception as exc:  # a crashing guard never becomes a 500
            err = f"{type(exc).__name__}: {str(exc)[:200]}"
        return verdict, err, start, round((time.perf_counter() - t0) * 1000, 3), span_id

    def _record(self, cg: Compiled, verdict: Verdict | None, err: str | None, action_taken: str, start: float,
                ms: float, span_id: str, **extra: Any) -> None:
        decision = "error" if err else ("pass" if verdict is not None and verdict.passed else "fail")
        score = verdict.score if verdict is not None else None
        s = Span(trace_id=self.span.trace_id, span_id=span_id, name=f"guard {cg.id}", kind="guard",
                 parent_id=self.span.span_id, start_time=start, end_time=start + ms / 1000.0,
                 status="error" if err else "ok", error=err)
        s.alias = self.span.alias
        s.user_id, s.session_id = self.span.user_id, self.span.session_id
        attrs: dict[str, Any] = {
            "guard": cg.id, "type": cg.guard.name, "stage": cg.stage, "decision": decision, "score": score,
            "action": cg.action, "action_taken": action_taken, "latency_ms": ms, "enforced": cg.enforced,
            "source": cg.source,
        }
        if verdict is not None and verdict.reason:
            attrs["reason"] = verdict.reason
        if verdict is not None and verdict.details:
            attrs["details"] = verdict.details
        if err:
            attrs["on_error"] = cg.on_error
        attrs.update(extra)
        s.attributes = attrs
        self.engine.recorder.record(s)
        summary = {"guard": cg.id, "stage": cg.stage, "decision": decision, "score": score,
                   "action_taken": action_taken, "latency_ms": ms}
        summary.update(extra)
        self.decisions.append(summary)

    def _on_error(self, cg: Compiled, verdict: Verdict | None, err: str, start: float, ms: float, span_id: str,
                  **extra: Any) -> None:
        if cg.on_error == "fail_closed":
            self._record(cg, verdict, err, "fail_closed", start, ms, span_id, **extra)
            raise GuardUnavailable(
                f"The {cg.stage} guard '{cg.id}' could not run ({err}); model '{self.ag.alias}' is configured to "
                "fail closed, so the request was not served.", cg)
        self._record(cg, verdict, err, "fail_open", start, ms, span_id, **extra)

    def _blocked(self, cg: Compiled, v: Verdict) -> GuardBlocked:
        score = f" (score {v.score:.2f})" if v.score is not None else ""
        return GuardBlocked(f"Request blocked by the input guard '{cg.id}': {v.reason}{score}.", cg, v,
                            self.span.trace_id, param="messages")

    # ---- input ----------------------------------------------------------------------
    async def run_input(self) -> dict[str, Any] | None:
        """Run the input guards in order; may rewrite ``req.body``; returns a fixed
        completion when a guard with ``action: fallback`` fails."""
        messages = self.req.body["messages"]
        original = messages
        for cg in self.input:
            msgs = messages
            verdict, err, start, ms, sid = await self._run(cg, lambda ctx, g=cg.guard, m=msgs: g.check_input(m, ctx))
            if err is not None:
                self._on_error(cg, verdict, err, start, ms, sid)
                continue
            assert verdict is not None
            if verdict.passed:
                self._record(cg, verdict, None, "none", start, ms, sid)
                continue
            act = cg.action
            if act in ("redact", "mask"):
                if verdict.messages is not None:
                    messages = verdict.messages
                self._record(cg, verdict, None, ACTION_TAKEN[act], start, ms, sid)
            elif act == "flag":
                self._record(cg, verdict, None, "flagged", start, ms, sid)
            elif act == "fallback" and self._fixed_text(cg) is not None:
                self._record(cg, verdict, None, "fallback", start, ms, sid)
                self._set_messages(messages, original)
                self.span.attributes["guard_fallback"] = {"guard": cg.id, "to": "response"}
                return self.fixed_completion(self._fixed_text(cg) or "", finish="stop")
            else:  # block (and fallback with nothing to fall back to)
                self._record(cg, verdict, None, "blocked", start, ms, sid)
                self._set_messages(messages, original)
                raise self._blocked(cg, verdict)
        self._set_messages(messages, original)
        return None

    def _set_messages(self, messages: list[dict[str, Any]], original: list[dict[str, Any]]) -> None:
        if messages is not original:
            self.req.body = {**self.req.body, "messages": messages}

    def _fixed_text(self, cg: Compiled) -> str | None:
        return cg.guard.options.response if cg.guard.options.response is not None else self.ag_fallback_text

    @property
    def ag_fallback_text(self) -> str | None:
        router = self.engine.routers.get(self.ag.alias)
        return router.cfg.fallback_response if router is not None else None

    def fixed_completion(self, text: str, finish: str = "stop") -> dict[str, Any]:
        return {
            "id": new_completion_id(), "object": "chat.completion", "created": now(),
            "model": f"{self.ag.alias}:guard_fallback",
            "choices": [{"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish} for i in range(self.req.n)],
            "usage": self._usage_total(),
        }

    # ---- output ---------------------------------------------------------------------
    def _note_usage(self, resp: dict[str, Any]) -> None:
        u = resp.get("usage")
        if isinstance(u, dict):
            self._usage.append(u)

    def _usage_total(self) -> dict[str, Any] | None:
        if not self._usage:
            return None
        p = sum(u.get("prompt_tokens") or 0 for u in self._usage)
        c = sum(u.get("completion_tokens") or 0 for u in self._usage)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def _check_response(self, resp: dict[str, Any], attempt: int, reasks: dict[str, int],
                              in_fallback: bool, only: list[Compiled] | None = None) -> _Outcome:
        choices = resp.get("choices") or []
        new_choices: list[dict[str, Any]] = []
        changed = False
        for choice in choices:
            msg = choice.get("message") or {}
            text = msg.get("content")
            idx = choice.get("index", 0)
            if not isinstance(text, str):
                new_choices.append(choice)
                continue
            blocked: tuple[Compiled, Verdict] | None = None
            for cg in (only if only is not None else self.output):
                current = text
                verdict, err, start, ms, sid = await self._run(
                    cg, lambda ctx, g=cg.guard, t=current: g.check_output(t, ctx))
                extra: dict[str, Any] = {"attempt": attempt, "choice": idx}
                if in_fallback:
                    extra["fallback"] = True
                if err is not None:
                    self._on_error(cg, verdict, err, start, ms, sid, **extra)
                    continue
                assert verdict is not None
                if verdict.passed:
                    if verdict.text is not None and verdict.text != text:  # e.g. JSON unwrapped from a fence
                        text = verdict.text
                    self._record(cg, verdict, None, "none", start, ms, sid, **extra)
                    continue
                act = cg.action
                if act == "flag":
                    self._record(cg, verdict, None, "flagged", start, ms, sid, **extra)
                elif act in ("redact", "mask"):
                    if verdict.text is not None:
                        text = verdict.text
                    self._record(cg, verdict, None, ACTION_TAKEN[act], start, ms, sid, **extra)
                elif act == "reask" and not in_fallback:
                    left = cg.guard.options.max_attempts - reasks.get(cg.id, 0)
                    self._record(cg, verdict, None, "reask" if left > 0 else "reask_exhausted", start, ms, sid,
                                 **extra)
                    return _Outcome("reask" if left > 0 else "fallback", resp, cg, verdict, current)
                elif act in ("fallback", "reask"):
                    self._record(cg, verdict, None, "fallback", start, ms, sid, **extra)
                    return _Outcome("fallback", resp, cg, verdict, current)
                else:
                    self._record(cg, verdict, None, "blocked", start, ms, sid, **extra)
                    blocked = (cg, verdict)
                    break
            if blocked is not None:
                cg, verdict = blocked
                new_choices.append({**choice, "message": {**msg, "content": None, "refusal": _refusal(cg, verdict)},
                                    "finish_reason": "content_filter"})
                changed = True
            elif text != msg.get("content"):
                new_choices.append({**choice, "message": {**msg, "content": text}})
                changed = True
            else:
                new_choices.append(choice)
        return _Outcome("ok", {**resp, "choices": new_choices} if changed else resp)

    async def run_output(self, resp: dict[str, Any], target: Any, call: Caller) -> tuple[dict[str, Any], Any]:
        """Check the answer; re-ask / fall back as configured. Returns (response, target)."""
        self._note_usage(resp)
        reasks: dict[str, int] = {}
        messages = list(self.req.body["messages"])
        attempt = 0
        while True:
            out = await self._check_response(resp, attempt, reasks, in_fallback=False)
            if out.kind == "ok":
                return self._with_usage(out.resp, resp), target
            assert out.guard is not None and out.verdict is not None
            if out.kind == "reask":
                reasks[out.guard.id] = reasks.get(out.guard.id, 0) + 1
                attempt += 1
                messages += [{"role": "assistant", "content": out.text or ""},
                             {"role": "user", "content": out.guard.guard.reask_message(out.verdict)}]
                self.span.attributes["reasks"] = attempt
                resp, target = await call(list(messages), None)
                self._note_usage(resp)
                continue
            return await self._fall_back(out, target, call)

    async def _fall_back(self, out: _Outcome, target: Any, call: Caller) -> tuple[dict[str, Any], Any]:
        cg, verdict = out.guard, out.verdict
        assert cg is not None and verdict is not None
        t = target
        while t is not None:
            try:
                resp2, t2 = await call(None, t)
            except (NoMoreTargets, GatewayError):
                break
            self._note_usage(resp2)
            checked = await self._check_response(resp2, 0, {}, in_fallback=True)
            if checked.kind == "ok":
                self.span.attributes["guard_fallback"] = {"guard": cg.id, "to": "target"}
                return self._with_usage(checked.resp, resp2), t2
            t = t2
        text = self._fixed_text(cg)
        if text is not None:
            self.span.attributes["guard_fallback"] = {"guard": cg.id, "to": "response"}
            return self.fixed_completion(text), None
        if cg.structured:
            raise OutputValidationFailed(cg, verdict, self.span.trace_id)
        resp = out.resp
        choices = [{**c, "message": {**(c.get("message") or {}), "content": None, "refusal": _refusal(cg, verdict)},
                    "finish_reason": "content_filter"} for c in resp.get("choices") or []]
        return self._with_usage({**resp, "choices": choices}, resp), target

    def _with_usage(self, resp: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
        if len(self._usage) > 1:
            return {**resp, "usage": {**(last.get("usage") or {}), **(self._usage_total() or {})}}
        return resp

    # ---- streams ----------------------------------------------------------------------
    def wrap_stream(self, agen: Any, first: dict[str, Any], target: Any, call: Caller) -> AsyncIterator[dict[str, Any]]:
        self.final_target = target
        mode = self.ag.cfg.stream if self.explicit_output else "incremental"
        if mode == "buffer":
            return self._buffered(agen, first, target, call)
        return self._incremental(agen, first)

    async def _buffered(self, agen: Any, first: dict[str, Any], target: Any, call: Caller
                        ) -> AsyncIterator[dict[str, Any]]:
        chunks = [first]
        acc = StreamAccumulator()
        acc.add(first)
        try:
            while True:
                try:
                    c = await agen.__anext__()
                except StopAsyncIteration:
                    break
                chunks.append(c)
                acc.add(c)
        except UpstreamError as exc:
            raise GatewayError(f"{exc.message} (while buffering the stream for the output guards)", status=502,
                               code="upstream_stream_error") from None
        finally:
            await agen.aclose()
        resp = acc.response()
        resp["created"] = first.get("created") or now()
        checked, t = await self.run_output(resp, target, call)
        self.final_target = t
        if checked is resp:
            for c in chunks:
                yield c
            return
        for c in completion_chunks(checked):
            yield c

    async def _incremental(self, agen: Any, first: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        window = self.ag.cfg.stream_window_chars
        live = [c for c in self.output if _streamable(c.guard)]
        end = [c for c in self.output if not _streamable(c.guard)]
        redactors = [c for c in live if c.action in ("redact", "mask")]
        blockers = [c for c in live if c.action not in ("redact", "mask")]
        hold = bool(live)
        states: dict[int, _ChoiceState] = {}
        stats: dict[str, _StreamStat] = {c.id: _StreamStat() for c in self.output}
        taken: dict[str, str] = {}

        async def process(chunk: dict[str, Any]) -> dict[str, Any] | None:
            choices = chunk.get("choices")
            if not choices:
                return chunk
            out = []
            for ch in choices:
                idx = ch.get("index", 0)
                st = states.setdefault(idx, _ChoiceState())
                delta = ch.get("delta") or {}
                fin = ch.get("finish_reason")
                text = delta.get("content")
                if text:
                    st.pending += text
                release = ""
                if st.pending and (fin or not hold or len(st.pending) >= 2 * window):
                    release = self._release(st, bool(fin) or not hold, window, redactors, blockers, stats, taken)
                if fin:
                    st.done = True
                    await self._end_checks(st, end, stats, taken)
                nd = dict(delta)
                if text:
                    if release:
                        nd["content"] = release
                    else:
                        nd.pop("content", None)
                elif release:
                    nd["content"] = release
                if nd or fin:
                    out.append({**ch, "delta": nd})
            if not out:
                return None
            return {**chunk, "choices": out}

        try:
            c: dict[str, Any] | None = first
            while c is not None:
                o = await process(c)
                if o is not None:
                    yield o
                try:
                    c = await agen.__anext__()
                except StopAsyncIteration:
                    c = None
            for idx, st in sorted(states.items()):  # a choice that ended without finish_reason
                if st.done:
                    continue
                rest = self._release(st, True, window, redactors, blockers, stats, taken) if st.pending else ""
                await self._end_checks(st, end, stats, taken)
                if rest:
                    yield {"id": first.get("id"), "object": "chat.completion.chunk", "created": first.get("created"),
                           "model": first.get("model"),
                           "choices": [{"index": idx, "delta": {"content": rest}, "finish_reason": None}]}
        finally:
            await agen.aclose()
            for cg in self.output:
                s = stats[cg.id]
                if s.runs == 0 and not s.error:
                    continue
                v = s.verdict or Verdict(True, s.score)
                self._record(cg, None if s.error else v, s.error,
                             taken.get(cg.id, "flagged" if s.fails else "none"),
                             s.start, round(s.ms, 3), new_span_id(), stream="incremental", checks=s.runs)

    def _check_sync(self, cg: Compiled, text: str, stats: dict[str, _StreamStat]) -> Verdict | None:
        s = stats[cg.id]
        t0 = time.perf_counter()
        try:
            v = cg.guard.check(text, self._ctx("output", cg, ""), "assistant")
        except Exception as exc:
            s.error = f"{type(exc).__name__}: {str(exc)[:200]}"
            if cg.on_error == "fail_closed":
                raise self._stream_error(cg, None, unavailable=True) from None
            return None
        finally:
            s.ms += (time.perf_counter() - t0) * 1000
            s.runs += 1
        if v.score is not None:
            s.score = max(s.score or 0.0, v.score)
        if not v.passed:
            s.fails += 1
            s.verdict = v
        return v

    def _release(self, st: _ChoiceState, final: bool, window: int, redactors: list[Compiled],
                 blockers: list[Compiled], stats: dict[str, _StreamStat], taken: dict[str, str]) -> str:
        text = st.pending
        cut = len(text) if final else len(text) - window
        full = st.raw + text
        for cg in blockers:  # checked on everything seen so far, held-back tail included
            v = self._check_sync(cg, full, stats)
            if v is not None and not v.passed:
                if cg.action == "flag":
                    taken[cg.id] = "flagged"
                    continue
                taken[cg.id] = "blocked"
                raise self._stream_error(cg, v)
        for cg in redactors:  # never cut through a finding
            for a, b in cg.guard.spans(text):  # type: ignore[attr-defined]
                if a < cut < b:
                    cut = a
        piece = text[:cut]
        st.pending = text[cut:]
        st.raw += piece
        for cg in redactors:
            v = self._check_sync(cg, piece, stats)
            if v is not None and not v.passed:
                piece = cg.guard.redact_text(piece)  # type: ignore[attr-defined]
                taken[cg.id] = ACTION_TAKEN[cg.action]
        return piece

    async def _end_checks(self, st: _ChoiceState, end: list[Compiled], stats: dict[str, _StreamStat],
                          taken: dict[str, str]) -> None:
        for cg in end:
            s = stats[cg.id]
            verdict, err, start, ms, _sid = await self._run(cg, lambda ctx, g=cg.guard, t=st.raw: g.check_output(t, ctx))
            s.runs += 1
            s.ms += ms
            s.start = min(s.start, start)
            if err is not None:
                s.error = err
                taken[cg.id] = cg.on_error
                if cg.on_error == "fail_closed":
                    raise self._stream_error(cg, None, unavailable=True)
                continue
            assert verdict is not None
            if verdict.score is not None:
                s.score = max(s.score or 0.0, verdict.score)
            if verdict.passed:
                continue
            s.fails += 1
            s.verdict = verdict
            if cg.action == "flag" or cg.source == "implicit":
                taken[cg.id] = "flagged"
                continue
            taken[cg.id] = "blocked"  # the text is already out: re-ask / fall back cannot apply
            raise self._stream_error(cg, verdict)

    def _stream_error(self, cg: Compiled, v: Verdict | None, unavailable: bool = False) -> GatewayError:
        if unavailable:
            return GuardUnavailable(f"The output guard '{cg.id}' failed and model '{self.ag.alias}' fails closed; "
                                    "the stream was stopped.", cg)
        assert v is not None
        return GuardBlocked(f"The response was stopped by the output guard '{cg.id}': {v.reason}.", cg, v,
                            self.span.trace_id)


def _streamable(g: Guard) -> bool:
    return bool(getattr(g, "streamable", False)) and not g.threaded


def _refusal(cg: Compiled, v: Verdict) -> str:
    return f"The response was withheld by the output guard '{cg.id}': {v.reason}."


def completion_chunks(resp: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat.completion as the chunks a stream of it would have had."""
    base = {"id": resp.get("id") or new_completion_id(), "object": "chat.completion.chunk",
            "created": resp.get("created") or now(), "model": resp.get("model")}
    out: list[dict[str, Any]] = []
    for c in resp.get("choices") or []:
        i = c.get("index", 0)
        msg = c.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant"}
        if msg.get("content") is not None:
            delta["content"] = msg["content"]
        if msg.get("refusal"):
            delta["refusal"] = msg["refusal"]
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{"index": k, **tc} for k, tc in enumerate(msg["tool_calls"])]
        out.append({**base, "choices": [{"index": i, "delta": delta, "finish_reason": None}]})
        out.append({**base, "choices": [{"index": i, "delta": {}, "finish_reason": c.get("finish_reason") or "stop"}]})
    if resp.get("usage"):
        out.append({**base, "choices": [], "usage": resp["usage"]})
    return out
