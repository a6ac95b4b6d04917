"""A regular expression the text must not contain (``mode: forbid``, the default) or must
match (``mode: require``). ``redact`` replaces forbidden matches with ``replacement``.

Patterns come only from the operator's config (a client cannot add one per request:
a hostile pattern could backtrack for seconds), and are compiled at start-up.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from .base import Guard, GuardContext, GuardOptions, Verdict


class RegexOptions(GuardOptions):
    pattern: str
    mode: Literal["forbid", "require"] = "forbid"
    ignore_case: bool = True
    replacement: str = "[REDACTED]"
    label: str | None = None  # said in the reason instead of the pattern itself
    max_chars: int = Field(100_000, ge=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {v!r}: {exc}") from None
        return v


class RegexGuard(Guard):
    name: ClassVar[str] = "regex"
    Options: ClassVar[type[GuardOptions]] = RegexOptions
    actions: ClassVar[frozenset[str]] = frozenset({"block", "flag", "fallback", "redact"})
    output_actions: ClassVar[frozenset[str]] = frozenset({"block", "flag", "fallback", "redact", "reask"})
    default_roles: ClassVar[tuple[str, ...]] = ("user",)
    client_safe: ClassVar[bool] = False

    def __init__(self, options: GuardOptions, stage: Any) -> None:
        super().__init__(options, stage)
        o: RegexOptions = options  # type: ignore[assignment]
        if o.mode == "require" and self.action == "redact":
            raise ValueError("'redact' needs mode: forbid")
        self.rx = re.compile(o.pattern, re.I if o.ignore_case else 0)
        self.mode = o.mode
        self.replacement = o.replacement
        self.label = o.label or f"/{o.pattern}/"
        self.max_chars = o.max_chars

    @property
    def streamable(self) -> bool:  # type: ignore[override]
        return self.mode == "forbid"

    def find(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in self.rx.finditer(text[: self.max_chars]) if m.end() > m.start()]

    spans = find

    def redact_text(self, text: str) -> str:
        return self.rx.sub(self.replacement, text)

    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:
        text = text[: self.max_chars]
        if self.mode == "require":
            if self.rx.search(text):
                return Verdict(True, 0.0)
            return Verdict(False, 1.0, f"does not match {self.label}")
        spans = self.find(text)
        if not spans:
            return Verdict(True, 0.0)
        v = Verdict(False, 1.0, f"matches {self.label} ({len(spans)}x)", {"matches": len(spans)})
        if self.action == "redact":
            v.text = self.rx.sub(self.replacement, text)
        return v

    def reask_message(self, verdict: Verdict) -> str:
        if self.options.message:
            return self.options.message
        if self.mode == "require":
            return f"Your previous answer must match the pattern {self.label}. Answer again in that format."
        return f"Your previous answer contained text that is not allowed ({self.label}). Answer again without it."
