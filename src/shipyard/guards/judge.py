"""An LLM-as-judge guard: any configured alias grades the text against a rubric.

The judge is asked for ``{"violation": bool, "score": 0..1, "reason": "..."}`` with
``response_format: json_object``; the check fails when ``violation`` is true or ``score``
reaches ``threshold``. The judge call is a normal call through the engine (its own llm
span, a child of this guard's span, so its cost shows in the same trace). It is slow and
costs money, so it is config-only (never added per request) and has its own default
timeout of 15 s; the alias's ``on_error`` policy applies when the judge fails or times out.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from pydantic import Field

from .base import Guard, GuardContext, GuardOptions, Verdict, message_texts

SYSTEM = (
    "You are a strict, impartial content evaluator. You will be given a rubric and a text. "
    "Decide whether the text violates the rubric. Reply with only a JSON object: "
    '{"violation": true or false, "score": a number from 0 (clearly fine) to 1 (clear violation), '
    '"reason": "one short sentence"}.'
)
_SCORE_RE = re.compile(r'"?score"?\s*[:=]\s*([01](?:\.\d+)?)')


class JudgeOptions(GuardOptions):
    alias: str
    rubric: str = Field(min_length=1)
    max_chars: int = Field(8000, ge=100)


class LLMJudge(Guard):
    name: ClassVar[str] = "llm_judge"
    Options: ClassVar[type[GuardOptions]] = JudgeOptions
    actions: ClassVar[frozenset[str]] = frozenset({"flag", "block", "fallback"})
    output_actions: ClassVar[frozenset[str]] = frozenset({"flag", "block", "fallback", "reask"})
    default_action: ClassVar[str] = "flag"
    default_threshold: ClassVar[float] = 0.5
    default_timeout_ms: ClassVar[float] = 15_000
    client_safe: ClassVar[bool] = False

    def __init__(self, options: GuardOptions, stage: Any) -> None:
        super().__init__(options, stage)
        o: JudgeOptions = options  # type: ignore[assignment]
        self.alias, self.rubric, self.max_chars = o.alias, o.rubric, o.max_chars

    async def judge(self, text: str, ctx: GuardContext) -> Verdict:
        from ..types import parse_chat_request

        engine = ctx.engine
        if engine is None:
            raise RuntimeError("llm_judge needs the engine")
        if len(text) > self.max_chars:
            text = text[: self.max_chars // 2] + "\n[...]\n" + text[-self.max_chars // 2:]
        req = parse_chat_request({
            "model": self.alias,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Rubric:\n{self.rubric}\n\nText to evaluate:\n<<<\n{text}\n>>>"},
            ],
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "metadata": {"shipyard_judge_for": ctx.alias},
        })
        span = engine.new_span("llm", f"judge {self.id}", trace_id=ctx.trace_id, parent_id=ctx.parent_span_id)
        resp = await engine.complete(req, span)
        content = ((resp.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        violation, score, reason = parse_judgement(content)
        details = {"judge_alias": self.alias}
        if violation or score >= (self.threshold or 0.5):
            return Verdict(False, score, f"judge: {reason or 'violates the rubric'}", details)
        return Verdict(True, score, "", details)

    async def check_input(self, messages: list[dict[str, Any]], ctx: GuardContext) -> Verdict:
        texts = [f"{m.get('role')}: {t}" for i, m in enumerate(messages) if i in set(self.scanned(messages))
                 for t in message_texts(m)]
        if not texts:
            return Verdict(True, None)
        return await self.judge("\n\n".join(texts), ctx)

    async def check_output(self, text: str, ctx: GuardContext) -> Verdict:
        return await self.judge(text, ctx)

    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:  # pragma: no cover
        raise RuntimeError("llm_judge is asynchronous")


def parse_judgement(content: str) -> tuple[bool, float, str]:
    """(violation, score, reason) from the judge's reply; tolerant of prose around JSON."""
    data: Any = None
    start, end = content.find("{"), content.rfind("}")
    if start != -1 and end > start:
        try:
            data = json.loads(content[start:end + 1])
        except json.JSONDecodeError:
            data = None
    if isinstance(data, dict):
        score = data.get("score")
        try:
            s = float(score) if score is not None else None
        except (TypeError, ValueError):
            s = None
        violation = data.get("violation")
        v = violation is True or (isinstance(violation, str) and violation.lower() in ("true", "yes"))
        if s is None:
            s = 1.0 if v else 0.0
        return v, max(0.0, min(1.0, s)), str(data.get("reason") or "")[:300]
    m = _SCORE_RE.search(content)
    if m:
        s = float(m.group(1))
        return s >= 0.5, s, ""
    raise ValueError("the judge's reply was not the requested JSON")
