"""Groundedness of an answer against the context passed in the request (RAG).

Heuristic, no model: the answer is split into sentences and each sentence's content words
(stop words dropped, light stemming) are looked up in the context. A sentence with at
least ``support`` (0.75) of its words in the context counts as grounded; otherwise it
contributes its share of missing words, and a sentence stating a number that the context
does not contain counts as wholly ungrounded. The score is the word-weighted ungrounded
share of the answer (0 = fully grounded); the check fails when it reaches ``threshold``
(default 0.5).

Where the context comes from, first found wins:
``metadata.guards.context`` (string or list of strings), ``metadata.context``, then the
text of ``tool`` / ``function`` messages, then (``sources`` including ``system``) system
messages after the first. A request with no context passes with ``skipped``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from .base import Guard, GuardContext, GuardOptions, Verdict, message_texts

STOP = frozenset("""a an the and or but if then else of to in on at by for with from into onto over under about as
is are was were be been being am do does did done have has had having it its it's this that these those there here
i you he she we they me him her us them my your his our their mine yours what which who whom whose when where why how
all any both each few more most other some such no nor not only own same so than too very can will just should could
would may might must shall also yes ok well like get got make made one two per via etc e.g i.e according based
answer question context document source text says said""".split())
_WORD_RE = re.compile(r"[^\W_]+(?:[.,'][^\W_]+)*")
_SENT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_NUM_RE = re.compile(r"\d+(?:[.,]\d+)*")


def _stem(w: str) -> str:
    for suf in ("ing", "edly", "ed", "es", "ly", "s"):
        if len(w) > len(suf) + 3 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def content_words(text: str) -> list[str]:
    return [_stem(w) for w in (x.lower() for x in _WORD_RE.findall(text)) if w not in STOP and (len(w) > 2 or w.isdigit())]


class GroundednessOptions(GuardOptions):
    support: float = Field(0.75, gt=0, le=1)  # a sentence this well covered by the context is grounded
    sources: list[Literal["metadata", "tool", "system"]] = Field(default_factory=lambda: ["metadata", "tool"])
    min_words: int = Field(3, ge=1)  # shorter sentences ("Sure.") are not judged


class Groundedness(Guard):
    name: ClassVar[str] = "groundedness"
    Options: ClassVar[type[GuardOptions]] = GroundednessOptions
    stages: ClassVar[frozenset[str]] = frozenset({"output"})
    actions: ClassVar[frozenset[str]] = frozenset({"flag", "block", "fallback", "reask"})
    default_action: ClassVar[str] = "flag"
    default_threshold: ClassVar[float] = 0.5

    def context_of(self, ctx: GuardContext) -> list[str]:
        if ctx.context_docs is not None:
            return ctx.context_docs
        o: GroundednessOptions = self.options  # type: ignore[assignment]
        docs: list[str] = []
        if "metadata" in o.sources:
            for holder in (ctx.metadata.get("guards"), ctx.metadata):
                c = holder.get("context") if isinstance(holder, dict) else None
                if isinstance(c, str):
                    return [c]
                if isinstance(c, list) and all(isinstance(x, str) for x in c):
                    return list(c)
        messages = ctx.body.get("messages") or []
        if "tool" in o.sources:
            for m in messages:
                if m.get("role") in ("tool", "function"):
                    docs += message_texts(m)
        if not docs and "system" in o.sources:
            for m in messages[1:]:  # the first is the operator's prompt
                if m.get("role") in ("system", "developer"):
                    docs += message_texts(m)
        return docs

    def score(self, answer: str, docs: list[str]) -> tuple[float, dict[str, Any]]:
        o: GroundednessOptions = self.options  # type: ignore[assignment]
        ctx_words = set(content_words(" ".join(docs)))
        ctx_numbers = set(_NUM_RE.findall(" ".join(docs)))
        total = 0
        unsupported = 0.0
        bad_sentences = 0
        for sent in _SENT_RE.split(answer):
            words = content_words(sent)
            if len(words) < o.min_words:
                continue
            total += len(words)
            found = sum(w in ctx_words for w in words) / len(words)
            numbers_ok = all(n in ctx_numbers for n in _NUM_RE.findall(sent))
            if not numbers_ok:
                unsupported += len(words)
                bad_sentences += 1
            elif found < o.support:
                unsupported += len(words) * (1.0 - found)
                bad_sentences += 1
        if total == 0:
            return 0.0, {"sentences": 0}
        return round(unsupported / total, 4), {"unsupported_sentences": bad_sentences}

    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:
        docs = self.context_of(ctx) if ctx is not None else []
        if not docs:
            return Verdict(True, None, "", {"skipped": "no context in the request"})
        score, details = self.score(text, docs)
        if score < (self.threshold or 0.5):
            return Verdict(True, score, "", details)
        return Verdict(False, score, f"{round(score * 100)}% of the answer is not supported by the context", details)

    def reask_message(self, verdict: Verdict) -> str:
        return self.options.message or (
            "Parts of your previous answer are not supported by the provided context. "
            "Answer again using only facts stated in the context; say so if the context does not contain the answer.")
