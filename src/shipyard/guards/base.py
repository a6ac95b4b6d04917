"""The guard interface: one small class per check, registered by name.

A guard looks at text and returns a :class:`Verdict` (pass or fail, a risk score in
[0, 1], a reason that never quotes the sensitive text, and optionally a rewritten text
for the ``redact`` / ``mask`` actions). What happens on a failure — block, redact, re-ask,
fall back or only flag — is the pipeline's job (``pipeline.py``), driven by ``action``.

Most guards only implement ``check(text, ctx, role)``; the base class applies it to every
message of the roles it scans (input) or to every choice's content (output). Guards that
need the whole conversation (``max_tokens``) or the network (``llm_judge``) override
``check_input`` / ``check_output``. A CPU-heavy guard sets ``threaded = True`` and runs
in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["input", "output"]
ACTIONS = ("block", "redact", "mask", "reask", "fallback", "flag")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class GuardOptions(BaseModel):
    """Keys every guard accepts; each guard's ``Options`` adds its own and forbids the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    id: str | None = None  # label in spans and errors; defaults to ``name``
    action: str | None = None  # defaults to the guard's ``default_action``
    enforced: bool = True  # False: a client may switch it off per request
    threshold: float | None = Field(None, ge=0, le=1)
    timeout_ms: float | None = Field(None, gt=0)
    on_error: Literal["fail_open", "fail_closed"] | None = None
    roles: list[Literal["system", "developer", "user", "assistant", "tool", "function"]] | None = None
    response: str | None = None  # the fixed answer for the ``fallback`` action
    max_attempts: int = Field(2, ge=0, le=10)  # re-asks for the ``reask`` action
    message: str | None = None  # re-ask feedback text; default says what failed


@dataclass(slots=True)
class Verdict:
    passed: bool
    score: float | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    text: str | None = None  # rewritten text (redact / mask) when the guard changed it
    messages: list[dict[str, Any]] | None = None  # rewritten messages (input guards)

    @classmethod
    def ok(cls, score: float | None = 0.0, **details: Any) -> "Verdict":
        return cls(True, score, "", dict(details))


@dataclass(slots=True)
class GuardContext:
    """What a guard may look at besides the text: the request and where it runs."""

    stage: Stage
    alias: str
    body: dict[str, Any]  # the (possibly already redacted) request body
    metadata: dict[str, Any]
    action: str
    engine: Any = None
    trace_id: str | None = None
    parent_span_id: str | None = None  # the guard span's id, for guards that call a model
    context_docs: list[str] | None = None  # RAG context for groundedness
    extra: dict[str, Any] = field(default_factory=dict)


def message_texts(m: dict[str, Any]) -> list[str]:
    c = m.get("content")
    if isinstance(c, str):
        return [c]
    if isinstance(c, list):
        return [p["text"] for p in c if isinstance(p, dict) and p.get("type") == "text"
                and isinstance(p.get("text"), str)]
    return []


def replace_message_text(m: dict[str, Any], old_new: dict[str, str]) -> dict[str, Any]:
    """A copy of ``m`` whose text parts are replaced per ``old_new``."""
    c = m.get("content")
    if isinstance(c, str):
        return {**m, "content": old_new.get(c, c)}
    if isinstance(c, list):
        parts = [
            {**p, "text": old_new.get(p["text"], p["text"])}
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) else p
            for p in c
        ]
        return {**m, "content": parts}
    return m


def leading_system(messages: list[dict[str, Any]]) -> int:
    """How many messages at the start are the operator's system/developer prompt."""
    n = 0
    for m in messages:
        if m.get("role") in ("system", "developer"):
            n += 1
        else:
            break
    return n


class Guard:
    """Base class. Subclasses set ``name``, ``Options`` and the class attributes below."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[GuardOptions]] = GuardOptions
    stages: ClassVar[frozenset[str]] = frozenset({"input", "output"})
    actions: ClassVar[frozenset[str]] = frozenset({"block", "flag", "fallback"})
    output_actions: ClassVar[frozenset[str] | None] = None  # when output allows more/other actions
    default_action: ClassVar[str] = "block"
    default_threshold: ClassVar[float | None] = None
    # roles scanned on input; the leading system/developer prompt is the operator's own
    # text and is skipped unless ``roles`` names system/developer explicitly
    default_roles: ClassVar[tuple[str, ...]] = ("user",)
    threaded: ClassVar[bool] = False  # CPU-heavy: run in a worker thread
    default_timeout_ms: ClassVar[float | None] = None
    block_code: ClassVar[str] = "content_filter"
    # output guards that can check a partial stream and so may run incrementally
    streamable: ClassVar[bool] = False
    # safe for clients to add per request (no cost beyond CPU, no regex from the client)
    client_safe: ClassVar[bool] = True

    def __init__(self, options: GuardOptions, stage: Stage) -> None:
        self.options = options
        self.stage = stage
        self.id = options.id or options.name
        self.action = options.action or self.default_action
        self.threshold = options.threshold if options.threshold is not None else self.default_threshold
        self.roles = tuple(options.roles) if options.roles is not None else self.default_roles
        self._explicit_roles = options.roles is not None

    @classmethod
    def allowed_actions(cls, stage: Stage) -> frozenset[str]:
        if stage == "output" and cls.output_actions is not None:
            return cls.output_actions
        return cls.actions

    async def start(self, engine: Any) -> None:
        """Load models or warm caches; called once when the engine starts."""

    # ---- the check ------------------------------------------------------------------
    def check(self, text: str, ctx: GuardContext, role: str) -> Verdict:
        raise NotImplementedError

    def scanned(self, messages: list[dict[str, Any]]) -> list[int]:
        skip = 0 if self._explicit_roles else leading_system(messages)
        return [i for i, m in enumerate(messages) if i >= skip and m.get("role") in self.roles]

    def check_messages(self, messages: list[dict[str, Any]], ctx: GuardContext) -> Verdict:
        """Apply ``check`` to each scanned message; the worst verdict wins and rewrites
        (redactions) are applied message by message."""
        worst: Verdict | None = None
        changed: dict[int, dict[str, Any]] = {}
        hits: list[int] = []
        for i in self.scanned(messages):
            m = messages[i]
            old_new: dict[str, str] = {}
            for text in message_texts(m):
                if not text:
                    continue
                v = self.check(text, ctx, m.get("role", "user"))
                if not v.passed:
                    hits.append(i)
                    if v.text is not None and v.text != text:
                        old_new[text] = v.text
                if worst is None or _worse(v, worst):
                    worst = v
            if old_new:
                changed[i] = replace_message_text(m, old_new)
        if worst is None:
            return Verdict.ok(None, scanned=0)
        if hits:
            worst = Verdict(False, worst.score, worst.reason, {**worst.details, "messages": sorted(set(hits))})
        if changed:
            worst.messages = [changed.get(i, m) for i, m in enumerate(messages)]
        return worst

    async def check_input(self, messages: list[dict[str, Any]], ctx: GuardContext) -> Verdict:
        if self.threaded:
            return await asyncio.to_thread(self.check_messages, messages, ctx)
        return self.check_messages(messages, ctx)

    async def check_output(self, text: str, ctx: GuardContext) -> Verdict:
        if self.threaded:
            return await asyncio.to_thread(self.check, text, ctx, "assistant")
        return self.check(text, ctx, "assistant")

    def reask_message(self, verdict: Verdict) -> str:
        if self.options.message:
            return self.options.message
        return (f"Your previous answer was rejected by the '{self.id}' check: {verdict.reason}. "
                "Answer again and fix that.")


def _worse(a: Verdict, b: Verdict) -> bool:
    if a.passed != b.passed:
        return not a.passed
    return (a.score or 0.0) > (b.score or 0.0)


def noisy_or(weights: list[float] | Any) -> float:
    p = 1.0
    for w in weights:
        p *= 1.0 - min(max(w, 0.0), 1.0)
    return round(1.0 - p, 4)
