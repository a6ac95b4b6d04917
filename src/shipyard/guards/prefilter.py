"""Literal prefilters for regular expressions, so most patterns never run.

``required_literals(pattern)`` walks the parsed pattern and returns a set of literal
strings at least one of which must occur in any text the pattern matches (or None when
it cannot tell). Checking ``any(lit in text for lit in lits)`` is a handful of C-speed
substring searches, so a guard with a hundred patterns only runs the few whose
keywords are present. The extraction is conservative: it never rejects a text the
pattern could match.
"""

from __future__ import annotations

import bisect
import re
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any

Lits = frozenset[str]

# words so common that requiring one of them filters nothing
COMMON = frozenset("""a an the to for of in on at by is are was were be been it its this that these those
with without and or not no do does did don't you your you're i me my we our us they them he she his her
what how why when where who which there here now new all any every some each more most very can could
would should will shall must may might need have has had get got make made use used like just also only
than then so if as from into out up down over about after before again yes ok please thanks""".split())


def _weight(lit: str) -> int:
    w = lit.strip(" .,:;-'\"")
    return 1 if (w in COMMON or len(w) < 3) else len(w)


def _rank(s: Lits) -> tuple[int, int]:
    return (min(_weight(x) for x in s), -len(s))


def _seq(items: Any) -> Lits | None:
    candidates: list[Lits] = []
    run: list[str] = []
    for op, av in items:
        if op is C.LITERAL:
            run.append(chr(av))
            continue
        if op is C.AT:  # zero-width: literals on both sides stay adjacent
            continue
        if run:
            candidates.append(frozenset({"".join(run)}))
            run = []
        req = _node(op, av)
        if req:
            candidates.append(req)
    if run:
        candidates.append(frozenset({"".join(run)}))
    if not candidates:
        return None
    return max(candidates, key=_rank)


def _node(op: Any, av: Any) -> Lits | None:
    if op is C.SUBPATTERN:
        return _seq(av[-1])
    if op is C.BRANCH:
        out: set[str] = set()
        for branch in av[1]:
            s = _seq(branch)
            if not s:
                return None
            out |= s
        return frozenset(out)
    if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
        lo, _hi, inner = av
        return _seq(inner) if lo >= 1 else None
    if op is C.ATOMIC_GROUP if hasattr(C, "ATOMIC_GROUP") else False:
        return _seq(av)
    return None


def _first(items: Any) -> Lits | None:
    """The literals a match must *start* with (every alternative literal-led), or None."""
    items = [(op, av) for op, av in items if op is not C.AT]
    if not items:
        return None
    run: list[str] = []
    for op, av in items:
        if op is C.LITERAL:
            run.append(chr(av))
        else:
            break
    if run:
        return frozenset({"".join(run)})
    op, av = items[0]
    if op is C.SUBPATTERN:
        return _first(av[-1])
    if op is C.BRANCH:
        out: set[str] = set()
        for branch in av[1]:
            f = _first(branch)
            if not f:
                return None
            out |= f
        return frozenset(out)
    return None


def first_literals(pattern: str) -> Lits | None:
    try:
        f = _first(P.parse(pattern))
    except re.error:
        return None
    if f is None or len(f) > 64 or any(len(x) < 2 for x in f):
        return None
    return f


def required_literals(pattern: str | re.Pattern[str]) -> Lits | None:
    src = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    flags = pattern.flags if isinstance(pattern, re.Pattern) else 0
    if flags & re.IGNORECASE:
        return None
    try:
        parsed = P.parse(src, flags)
    except re.error:
        return None
    return _seq(parsed)


def _top_level_branches(src: str) -> list[str]:
    out, depth, cls, esc, start = [], 0, False, False, 0
    for i, ch in enumerate(src):
        if esc:
            esc = False
        elif ch == "\\":
            esc = True
        elif cls:
            cls = ch != "]"
        elif ch == "[":
            cls = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            out.append(src[start:i])
            start = i + 1
    out.append(src[start:])
    return out


def bounded(pattern: str) -> str:
    """Cap the unbounded repeats that appear in our patterns (``\\s+``, ``\\w+``, ``{3,}``)
    so a pattern has a maximum width; on normalised text (runs of spaces collapsed) the
    caps change nothing."""
    out = pattern.replace("\\s+", "\\s{1,4}").replace("\\s*", "\\s{0,4}").replace("\\w+", "\\w{1,40}")
    out = out.replace("\\w*", "\\w{0,40}").replace("\\d+", "\\d{1,8}")
    out = re.sub(r"(?<!\\)\]\*", "]{0,200}", out)
    out = re.sub(r"(?<!\\)\]\+", "]{1,200}", out)
    out = re.sub(r"(?<!\\)\)\+", "){1,6}", out)
    out = re.sub(r"(?<!\\)\)\*", "){0,6}", out)
    return re.sub(r"\{(\d+),\}", lambda m: "{%s,%d}" % (m.group(1), int(m.group(1)) + 40), out)


class FastPattern:
    """A compiled pattern with a literal prefilter, searched only around the places where
    one of its required literals occurs (when its match width is bounded).

    A leading ``\\b`` (on every top-level branch) defeats the regex engine's literal-prefix
    scan and costs ~100x; it is dropped from the compiled pattern and checked on each
    candidate match instead."""

    __slots__ = ("rx", "lits", "word_start", "maxw", "first")

    # for each starting literal, its leading word (checked against a WordIndex first)

    def __init__(self, pattern: str) -> None:
        self.lits = required_literals(pattern)
        branches = _top_level_branches(pattern)
        if all(b.startswith("\\b") for b in branches):
            src = "|".join(b[2:] for b in branches)
            self.word_start = True
        else:
            src = pattern
            self.word_start = False
        self.rx = re.compile(src)
        hi = P.parse(src).getwidth()[1]
        self.maxw = hi if hi <= 2000 else None
        # when every match starts with one of a few literals, find those with str.find and
        # try an anchored match there instead of letting the engine try every position
        first = first_literals(src)
        self.first = [(lit, _lead_word(lit) if self.word_start else None) for lit in sorted(first)] if first else None

    def search(self, text: str, index: "WordIndex | None" = None) -> re.Match[str] | None:
        if self.first is not None:
            return self._search_first(text, index)
        lits = self.lits
        if lits is None:
            return self._search(text, 0, len(text))
        if self.maxw is None or len(text) <= 4 * self.maxw + 64:
            return self._search(text, 0, len(text)) if may_match(lits, text) else None
        w = self.maxw + 1
        spans: list[tuple[int, int]] = []
        for lit in lits:
            i = text.find(lit)
            while i != -1:
                spans.append((max(0, i - w), i + len(lit) + w))
                if len(spans) > 64:  # many hits: one full scan is cheaper
                    return self._search(text, 0, len(text))
                i = text.find(lit, i + 1)
        if not spans:
            return None
        spans.sort()
        a, b = spans[0]
        for lo, hi in spans[1:]:
            if lo <= b:
                b = max(b, hi)
                continue
            m = self._search(text, a, b)
            if m is not None:
                return m
            a, b = lo, hi
        return self._search(text, a, b)

    def _search_first(self, text: str, index: "WordIndex | None") -> re.Match[str] | None:
        if self.lits is not None and not may_match(self.lits, text):
            return None
        starts: set[int] = set()
        for lit, word in self.first:  # type: ignore[union-attr]
            if word is not None and index is not None and not index.has_prefix(word):
                continue  # no word of the text starts like this literal
            i = text.find(lit)
            while i != -1:
                starts.add(i)
                i = text.find(lit, i + 1)
        match = self.rx.match
        for i in sorted(starts):
            if self.word_start and i > 0 and _is_word(text[i - 1]) and _is_word(text[i]):
                continue
            m = match(text, i)
            if m is not None:
                return m
        return None

    def _search(self, text: str, pos: int, endpos: int) -> re.Match[str] | None:
        rx = self.rx
        if not self.word_start:
            return rx.search(text, pos, endpos)
        while True:
            m = rx.search(text, pos, endpos)
            if m is None:
                return None
            i = m.start()
            if i == 0 or not _is_word(text[i - 1]) or not _is_word(text[i]):
                return m
            pos = i + 1


_WORD_RE = re.compile(r"[^\W_]+")


def _lead_word(lit: str) -> str | None:
    m = _WORD_RE.match(lit)
    return m.group(0) if m else None


class WordIndex:
    """The sorted distinct words of a text, for 'does any word start with ...' checks."""

    __slots__ = ("words",)

    def __init__(self, text: str) -> None:
        self.words = sorted(set(_WORD_RE.findall(text)))

    def has_prefix(self, prefix: str) -> bool:
        words = self.words
        i = bisect.bisect_left(words, prefix)
        return i < len(words) and words[i].startswith(prefix)


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def may_match(lits: Lits | None, text: str) -> bool:
    if lits is None:
        return True
    for lit in lits:
        if lit in text:
            return True
    return False
