"""Intent routing: a virtual model that classifies the request and forwards it.

Methods, tried in this order: ``rule`` (an intent's regular expressions; first intent in
config order wins), ``keywords`` (whole-word matches; most distinct hits wins), then
``centroid`` (cosine similarity between the request text and each intent's centroid of
labelled examples — hashed n-grams by default, or vectors from an embeddings alias).
Below ``threshold`` (or with nothing matching) the router's ``default`` route is taken.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from ..routing.router import Attempt
from .config import IntentRouterConfig
from .embed import centroid, cosine, dense_centroid, dense_cosine, embed


def request_text(messages: list[dict[str, Any]], which: str) -> str:
    def text(m: dict[str, Any]) -> str:
        c = m.get("content")
        if isinstance(c, str):
            return c
        if isinstance(c, list):
            return " ".join(p.get("text", "") for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
        return ""

    if which == "last_user":
        for m in reversed(messages):
            if m.get("role") == "user":
                return text(m)
        return text(messages[-1]) if messages else ""
    if which == "user":
        return "\n".join(text(m) for m in messages if m.get("role") == "user")
    return "\n".join(text(m) for m in messages)


class IntentRouter:
    def __init__(self, name: str, cfg: IntentRouterConfig, engine: Any) -> None:
        self.name = name
        self.cfg = cfg
        self.engine = engine
        self.patterns = {i: [re.compile(p) for p in it.patterns] for i, it in cfg.intents.items()}
        self.keywords = {i: [(k, re.compile(r"(?<!\w)" + re.escape(k.lower()) + r"(?!\w)")) for k in it.keywords]
                         for i, it in cfg.intents.items()}
        self.centroids: dict[str, Any] | None = None
        if cfg.embeddings is None:
            self.centroids = {i: centroid(embed(e) for e in it.examples)
                              for i, it in cfg.intents.items() if it.examples}
        self._lock: asyncio.Lock | None = None

    async def _embed_alias(self, texts: list[str]) -> list[list[float]]:
        router = self.engine.router_for(self.cfg.embeddings)
        attempts: list[Attempt] = []

        async def op(target: Any) -> dict[str, Any]:
            return await target.provider.embeddings({"model": target.model, "input": texts}, target.timeouts)

        resp, _ = await router.execute(op, attempts)
        data = sorted(resp.get("data") or [], key=lambda d: d.get("index", 0))
        return [d["embedding"] for d in data]

    async def _centroids(self) -> dict[str, Any]:
        if self.centroids is not None:
            return self.centroids
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.centroids is None:
                out = {}
                for i, it in self.cfg.intents.items():
                    if it.examples:
                        out[i] = dense_centroid(await self._embed_alias(list(it.examples)))
                self.centroids = out
        return self.centroids

    async def classify(self, messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        """(route, decision) where decision = {router, intent, score, method, ...}."""
        t0 = time.perf_counter()
        text = request_text(messages, self.cfg.text)
        low = text.lower()
        decision: dict[str, Any] = {"router": self.name}
        for intent, pats in self.patterns.items():
            for p in pats:
                if p.search(text):
                    decision.update(intent=intent, score=1.0, method="rule", matched=p.pattern)
                    return self._done(intent, decision, t0)
        best, hits_best, matched = None, 0, []
        for intent, kws in self.keywords.items():
            hits = [k for k, rx in kws if rx.search(low)]
            if len(hits) > hits_best:
                best, hits_best, matched = intent, len(hits), hits
        if best is not None:
            decision.update(intent=best, score=round(hits_best / max(1, len(self.keywords[best])), 4),
                            method="keywords", matched=matched)
            return self._done(best, decision, t0)
        cents = await self._centroids()
        if cents and text.strip():
            if self.cfg.embeddings is None:
                q = embed(text)
                scores = {i: cosine(q, c) for i, c in cents.items()}
            else:
                qv = (await self._embed_alias([text]))[0]
                scores = {i: dense_cosine(qv, c) for i, c in cents.items()}
            intent = max(scores, key=lambda i: scores[i])
            score = round(scores[intent], 4)
            if score >= self.cfg.threshold:
                decision.update(intent=intent, score=score, method="centroid")
                return self._done(intent, decision, t0)
            decision.update(best_guess=intent, best_score=score)
        decision.update(intent=None, score=None, method="default")
        return self._done(None, decision, t0)

    def _done(self, intent: str | None, decision: dict[str, Any], t0: float) -> tuple[str, dict[str, Any]]:
        route = self.cfg.default if intent is None else self.cfg.intents[intent].route
        decision["route"] = route
        decision["ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return route, decision
