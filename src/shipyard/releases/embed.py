"""A light text embedder: hashed word and character n-grams, L2-normalised sparse vectors.

No model, no download, deterministic across processes (crc32, not Python's salted hash).
Good enough for nearest-centroid intent routing on a few labelled examples and for a
"how similar are these two answers" score; use an embeddings alias when meaning matters
more than wording.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable

DIM = 1 << 18
_WORD = re.compile(r"[^\W_]+", re.UNICODE)

Vector = dict[int, float]


def _h(s: str) -> int:
    return zlib.crc32(s.encode("utf-8")) & (DIM - 1)


def embed(text: str, char_n: tuple[int, ...] = (3, 4), max_chars: int = 20_000) -> Vector:
    """Sparse vector of word unigrams, word bigrams and character n-grams (inside words)."""
    words = _WORD.findall(text[:max_chars].lower())
    counts: dict[int, float] = {}

    def add(key: str, w: float) -> None:
        i = _h(key)
        counts[i] = counts.get(i, 0.0) + w

    for i, w in enumerate(words):
        add("w:" + w, 1.0)
        if i:
            add("b:" + words[i - 1] + " " + w, 0.5)
        padded = f"<{w}>"
        for n in char_n:
            for j in range(max(0, len(padded) - n + 1)):
                add("c:" + padded[j:j + n], 0.3)
    if not counts:
        return {}
    vec = {k: 1.0 + math.log(v) if v >= 1 else v for k, v in counts.items()}
    norm = math.sqrt(sum(v * v for v in vec.values()))
    return {k: v / norm for k, v in vec.items()}


def cosine(a: Vector, b: Vector) -> float:
    if not a or not b:
        return 0.0
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(k, 0.0) for k, v in a.items())


def centroid(vectors: Iterable[Vector]) -> Vector:
    acc: dict[int, float] = {}
    n = 0
    for v in vectors:
        n += 1
        for k, x in v.items():
            acc[k] = acc.get(k, 0.0) + x
    if not n:
        return {}
    norm = math.sqrt(sum(x * x for x in acc.values())) or 1.0
    return {k: x / norm for k, x in acc.items()}


def dense_cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def dense_centroid(vectors: list[list[float]]) -> list[float]:
    if not vectors:
        return []
    dim = len(vectors[0])
    acc = [0.0] * dim
    for v in vectors:
        for i, x in enumerate(v[:dim]):
            acc[i] += x
    return [x / len(vectors) for x in acc]


def similarity(a: str, b: str) -> float:
    """0..1: how alike two texts are in wording (cosine of their hashed n-gram vectors)."""
    if a == b:
        return 1.0
    return max(0.0, min(1.0, cosine(embed(a), embed(b))))
