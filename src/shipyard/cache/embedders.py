"""Embedders for the semantic cache: a light built-in one, or an embeddings alias.

``builtin``: hashed character n-grams (3–5, inside words) and word unigrams, signed feature
hashing into a dense numpy vector, L2-normalised; function words weigh less. No model, no download, deterministic
across processes (crc32, not Python's salted ``hash``). It measures *wording*, not meaning:
"capital of France" and "capital of Germany" share most of their n-grams. The semantic
cache therefore also runs :func:`terms_conflict` (and a high default threshold); use an
embeddings alias for production.

An alias embedder calls the alias's targets (``/v1/embeddings``) through its router, with
its retries and fail-over, and normalises the vector.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Protocol

import numpy as np

DIM = 4096
STOPWORD_WEIGHT = 0.3  # function words count this much (measured: best split of paraphrases from swaps)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_APOS = re.compile(r"[\u2019\u2018`´]")
# contractions whose expansion makes paraphrases share words ("what's" ~ "what is")
_CONTRACTIONS = {
    "what's": "what is", "who's": "who is", "where's": "where is", "when's": "when is", "how's": "how is",
    "it's": "it is", "that's": "that is", "there's": "there is", "here's": "here is", "let's": "let us",
    "i'm": "i am", "you're": "you are", "we're": "we are", "they're": "they are", "isn't": "is not",
    "aren't": "are not", "wasn't": "was not", "weren't": "were not", "don't": "do not", "doesn't": "does not",
    "didn't": "did not", "can't": "can not", "cannot": "can not", "won't": "will not", "wouldn't": "would not",
    "shouldn't": "should not", "couldn't": "could not", "haven't": "have not", "hasn't": "has not",
    "i've": "i have", "you've": "you have", "i'll": "i will", "you'll": "you will", "i'd": "i would",
}
_CONTRACTION_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in _CONTRACTIONS) + r")\b")


def normalise(text: str) -> str:
    """Lower-case, straight apostrophes, contractions expanded, possessive 's dropped."""
    t = _APOS.sub("'", text.lower())
    t = _CONTRACTION_RE.sub(lambda m: _CONTRACTIONS[m.group(1)], t)
    return re.sub(r"(\w)'s\b", r"\1", t)


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def _slot(feature: str) -> tuple[int, float]:
    h = zlib.crc32(feature.encode("utf-8"))
    return h % DIM, (1.0 if (h >> 31) & 1 else -1.0)


class Embedder(Protocol):
    name: str

    async def embed(self, text: str) -> np.ndarray:
        """A unit-length float32 vector."""


class BuiltinEmbedder:
    """Hashed character n-grams + words, function words down-weighted (so the words that
    carry the question dominate); see the module docstring for its limits."""

    name = "builtin"

    def __init__(self, ngrams: tuple[int, ...] = (3, 4, 5), max_chars: int = 8000) -> None:
        self.ngrams = ngrams
        self.max_chars = max_chars

    def vector(self, text: str) -> np.ndarray:
        vec = np.zeros(DIM, dtype=np.float32)
        for w in words(text[: self.max_chars]):
            weight = STOPWORD_WEIGHT if w in STOPWORDS else 1.0
            i, s = _slot("w:" + w)
            vec[i] += s * weight
            padded = f"<{w}>"
            for n in self.ngrams:
                for j in range(max(1, len(padded) - n + 1)):
                    i, s = _slot(padded[j:j + n])
                    vec[i] += 0.5 * s * weight
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm else vec

    async def embed(self, text: str) -> np.ndarray:
        return self.vector(text)


class AliasEmbedder:
    """Vectors from an embeddings alias of the engine (called through its router)."""

    def __init__(self, engine: Any, alias: str) -> None:
        self.engine = engine
        self.alias = alias
        self.name = f"alias:{alias}"

    async def embed(self, text: str) -> np.ndarray:
        from ..routing.router import Attempt, ResolvedTarget

        router = self.engine.router_for(self.alias)
        attempts: list[Attempt] = []

        async def op(target: ResolvedTarget) -> dict[str, Any]:
            return await target.provider.embeddings({"model": target.model, "input": [text]}, target.timeouts)

        resp, _ = await router.execute(op, attempts)
        vec = np.asarray(resp["data"][0]["embedding"], dtype=np.float32)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm else vec


# ---- the term check ---------------------------------------------------------------------

# function words: their presence or absence rarely changes what is asked
STOPWORDS = frozenset(["a", "an", "the", "this", "that", "these", "those", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "done", "have", "has", "had", "having", "i", "me", "my", "mine", "we", "us", "our", "you", "your", "he", "him", "his", "she", "her", "it", "its", "they", "them", "their", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "of", "in", "on", "at", "to", "for", "from", "by", "with", "about", "as", "into", "onto", "over", "under", "up", "down", "out", "off", "and", "or", "but", "if", "then", "so", "than", "too", "very", "just", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "please", "tell", "give", "explain", "describe", "show", "say", "let", "know", "want", "need", "like", "some", "any", "all", "much", "many", "more", "most", "there", "here", "thing", "things", "one", "ones", "kind", "sort", "really", "actually", "also", "again", "still", "even"])
NEGATIONS = frozenset({"not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without"})


def _content(text: str) -> tuple[set[str], set[str], set[str]]:
    ws = words(text)
    negations = {w for w in ws if w in NEGATIONS}
    numbers = {w for w in ws if any(ch.isdigit() for ch in w)}
    content = {w for w in ws if w not in STOPWORDS and w not in NEGATIONS and w not in numbers}
    return content, numbers, negations


def _near(w: str, others: set[str]) -> bool:
    """Same word, or a plural/inflection of it (shared stem of all but 1–3 letters)."""
    for o in others:
        if o == w:
            return True
        short, long_ = (w, o) if len(w) <= len(o) else (o, w)
        if len(short) >= 4 and long_.startswith(short[: max(4, len(short) - 1)]) and len(long_) - len(short) <= 3:
            return True
    return False


def terms_conflict(a: str, b: str) -> bool:
    """True when two questions differ in a way that usually changes the answer even if
    they look alike: different numbers, a negation on one side only, or a content word
    *replaced* (each side has one the other lacks: "France" vs "Germany"). A word only
    added ("capital city of France") is not a conflict."""
    ca, na, ga = _content(a)
    cb, nb, gb = _content(b)
    if na != nb or ga != gb:
        return True
    only_a = {w for w in ca if not _near(w, cb)}
    only_b = {w for w in cb if not _near(w, ca)}
    return bool(only_a and only_b)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 0.0
    return float(np.dot(a, b))
