"""A maximum input size in tokens.

The count is an estimate that errs high (no tokenizer download): words count one token
per 4 characters (at least one), each other symbol one, each CJK character one, and every
message 4 more for its framing. If ``tiktoken`` is installed and ``encoding`` is set, that
encoding is used instead (its files must already be cached: nothing downloads).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field

from .base import Guard, GuardContext, GuardOptions, Verdict, message_texts

_PIECE_RE = re.compile(r"[A-Za-z]+|\d{1,3}|[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|[^\sA-Za-z\d]")
PER_MESSAGE = 4


def estimate_tokens(text: str) -> int:
    n = 0
    for p in _PIECE_RE.findall(text):
        n += (len(p) + 3) // 4 if p.isascii() and p.isalpha() else 1
    return n


class MaxTokensOptions(GuardOptions):
    limit: int = Field(ge=1)
    encoding: str | None = None  # a tiktoken encoding name, when tiktoken is installed


class MaxTokens(Guard):
    name: ClassVar[str] = "max_tokens"
    Options: ClassVar[type[GuardOptions]] = MaxTokensOptions
    stages: ClassVar[frozenset[str]] = frozenset({"input"})
    actions: ClassVar[frozenset[str]] = frozenset({"block", "flag", "fallback"})
    default_roles: ClassVar[tuple[str, ...]] = ("system", "developer", "user", "assistant", "tool", "function")
    block_code: ClassVar[str] = "input_too_long"

    def __init__(self, options: GuardOptions, stage: Any) -> None:
        super().__init__(options, stage)
        o: MaxTokensOptions = options  # type: ignore[assignment]
        self.limit = o.limit
        self._count = estimate_tokens
        if o.encoding:
            try:
                import tiktoken  # type: ignore[import-not-found]
            except ImportError:
                raise ValueError("'encoding' needs the tiktoken package") from None
            enc = tiktoken.get_encoding(o.encoding)
            self._count = lambda t: len(enc.encode(t, disallowed_special=()))

    def count(self, messages: list[dict[str, Any]]) -> int:
        return sum(PER_MESSAGE + sum(self._count(t) for t in message_texts(m)) for m in messages
                   if m.get("role") in self.roles)

    def check_messages(self, messages: list[dict[str, Any]], ctx: GuardContext) -> Verdict:
        n = self.count(messages)
        score = round(min(1.0, n / self.limit), 4)
        if n <= self.limit:
            return Verdict(True, score, "", {"tokens": n, "limit": self.limit})
        return Verdict(False, score, f"the input is about {n} tokens; the limit is {self.limit}",
                       {"tokens": n, "limit": self.limit})

    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:
        return self.check_messages([{"role": role, "content": text}], ctx)  # type: ignore[arg-type]
