"""The response cache the engine consults: one lookup before routing, one store after a
successful answer (docs/operations.md#caching).

``ResponseCache.lookup(req, router, span)`` returns None when the alias does not cache,
else a :class:`Lookup` holding the request's keys and — on a hit — the cached entry. The
engine answers a hit at once (``Lookup.response`` / ``Lookup.chunks``, recorded with
``Lookup.record_hit``: cost 0.0, the original's tokens as cached) and on a miss calls
``Lookup.store(resp, span)`` after it has recorded the call; the write runs beside the
request. Errors, guard refusals (blocked or fixed answers), ``fallback_response`` answers
and content-filtered choices are never stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..tracing.span import Span
from ..types import new_completion_id, now
from .base import CacheBackend, pack_vector, unpack_vector
from .config import AliasCacheConfig, CacheConfig
from .embedders import AliasEmbedder, BuiltinEmbedder, Embedder, terms_conflict
from .keys import (
    REQUEST_CACHE_CONTROL,
    Directive,
    Keys,
    alias_fingerprint,
    deterministic,
    digest,
    directive,
    request_keys,
)

log = logging.getLogger("shipyard.cache")

FAILED = object()  # what _io returns when the backend call failed
SEMANTIC_TOP = 5  # best candidates above the threshold checked (term check, entry still there)
ENTRY_VERSION = 1


@dataclass(slots=True)
class Hit:
    entry: dict[str, Any]
    key: str  # the entry served (for a semantic hit, not the request's own key)
    kind: str  # exact | semantic
    age_s: float
    similarity: float | None = None


def build_backend(cfg: CacheConfig, config: Any, clock: Callable[[], float]) -> CacheBackend:
    if cfg.backend == "sqlite":
        from .sqlite import SQLiteBackend

        return SQLiteBackend(cfg.path, cfg.max_entries, clock)
    if cfg.backend == "redis":
        from .redis import RedisBackend

        return RedisBackend(config)
    from .memory import MemoryBackend

    return MemoryBackend(cfg.max_entries, cfg.max_bytes, clock)


class ResponseCache:
    def __init__(self, engine: Any, *, backend: CacheBackend | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.config = engine.config
        self.cfg: CacheConfig = engine.config.cache
        self.clock = clock
        self.backend = backend if backend is not None else build_backend(self.cfg, self.config, clock)
        self.settings: dict[str, AliasCacheConfig] = {
            alias: self.cfg.for_alias(getattr(m, "cache", None)) for alias, m in self.config.models.items()
        }
        self._embedders: dict[str, Embedder] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.timeout_s = self.cfg.timeout_ms / 1000
        self.counts = {"hits": 0, "semantic_hits": 0, "misses": 0, "bypassed": 0, "stored": 0,
                       "not_stored": 0, "errors": 0}

    @classmethod
    def for_engine(cls, engine: Any) -> ResponseCache | None:
        """None unless some alias caches (the fast path costs nothing then)."""
        cfg = getattr(engine.config, "cache", None)
        if cfg is None:
            return None
        if not any(cfg.for_alias(getattr(m, "cache", None)).enabled for m in engine.config.models.values()):
            return None
        return cls(engine)

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        await self.backend.start()

    async def flush(self) -> None:
        """Wait for the writes in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), 5)
        except TimeoutError:  # pragma: no cover - a stuck backend at shutdown
            log.warning("cache: %d writes still pending at shutdown were dropped", len(self._tasks))
        await self.backend.close()

    def stats(self) -> dict[str, Any]:
        return {**self.counts, **self.backend.stats()}

    # ---- helpers -----------------------------------------------------------------------
    def embedder(self, name: str) -> Embedder:
        e = self._embedders.get(name)
        if e is None:
            e = self._embedders[name] = BuiltinEmbedder() if name == "builtin" else AliasEmbedder(self.engine, name)
        return e

    async def _io(self, what: str, aw: Any) -> Any:
        """A backend call bounded by ``cache.timeout_ms``; a failure is counted, logged at
        debug level (the backend logs outages once) and returns FAILED."""
        try:
            if self.backend.name == "memory":
                return await aw
            return await asyncio.wait_for(aw, self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counts["errors"] += 1
            log.debug("cache: %s failed: %s: %s", what, type(exc).__name__, exc)
            return FAILED

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _decode(self, raw: Any, d: Directive) -> tuple[dict[str, Any], float] | None:
        if not isinstance(raw, (bytes, bytearray, memoryview, str)):
            return None
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(entry, dict) or entry.get("v") != ENTRY_VERSION:
            return None
        age = max(0.0, self.clock() - float(entry.get("created_at") or 0))
        if d.max_age_s is not None and age > d.max_age_s:
            return None
        return entry, age

    # ---- the request path ----------------------------------------------------------------
    async def lookup(self, req: Any, router: Any, span: Span) -> Lookup | None:
        s = self.settings.get(router.alias)
        if s is None or not s.enabled:
            return None
        d = directive(req.metadata, REQUEST_CACHE_CONTROL.get())
        reason = None
        if not d.read and not d.write:
            reason = d.reason
        elif s.deterministic_only and not d.force and not deterministic(req.body):
            reason = "non-deterministic"
        keys = request_keys(req.body, alias_fingerprint(router, self.config), req.metadata) if reason is None else None
        if reason is None and keys is None:
            reason = "not keyable"
        if keys is None:
            span.attributes["cache"] = "bypass"
            span.attributes["cache_bypass"] = reason
            self.counts["bypassed"] += 1
            return None
        span.attributes["cache_key"] = keys.exact[:16]
        lk = Lookup(self, s, keys, d, router.alias)
        t0 = time.perf_counter()
        if d.read:
            await lk.find()
        else:
            span.attributes["cache_bypass"] = d.reason  # refresh: not read, the answer is stored
        span.attributes["cache_lookup_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        span.attributes["cache"] = "hit" if lk.hit is not None else "miss"
        if lk.hit is None:
            self.counts["misses"] += 1
        elif lk.hit.kind == "semantic":
            self.counts["semantic_hits"] += 1
        else:
            self.counts["hits"] += 1
        return lk


def _choices_cacheable(resp: dict[str, Any]) -> bool:
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for c in choices:
        if not isinstance(c, dict) or c.get("finish_reason") == "content_filter":
            return False
        msg = c.get("message") or {}
        if msg.get("refusal") or (msg.get("content") is None and not msg.get("tool_calls")):
            return False
    return True


def uncacheable(resp: dict[str, Any] | None, span: Span) -> str | None:
    """Why an answer must not be stored (None: it may be)."""
    if span.status != "ok" or resp is None:
        return "error"
    if span.attributes.get("fallback_response") or str(resp.get("model") or "").endswith(":fallback_response"):
        return "fallback_response"
    gf = span.attributes.get("guard_fallback")
    if isinstance(gf, dict) and gf.get("to") == "response":
        return "guard refusal"
    if not _choices_cacheable(resp):
        return "refusal or content filter"
    return None


class Lookup:
    """One request's view of the cache: its keys, what it asked for, and a hit if any."""

    __slots__ = ("alias", "cache", "context", "directive", "hit", "keys", "settings", "vector")

    def __init__(self, cache: ResponseCache, settings: AliasCacheConfig, keys: Keys, d: Directive,
                 alias: str) -> None:
        self.cache = cache
        self.settings = settings
        self.keys = keys
        self.directive = d
        self.alias = alias
        self.hit: Hit | None = None
        self.vector: np.ndarray | None = None
        sem = settings.semantic
        # the semantic context, per embedder: vectors of different embedders never meet
        self.context = (digest({"c": keys.context, "e": sem.embedder})[:40]
                        if sem.enabled and keys.context is not None else None)

    async def find(self) -> None:
        c = self.cache
        found = c._decode(await c._io("get", c.backend.get(self.keys.exact)), self.directive)
        if found is not None:
            self.hit = Hit(found[0], self.keys.exact, "exact", found[1])
            return
        if self.context is not None and self.keys.text is not None:
            await self._find_similar()

    async def _embed(self) -> np.ndarray | None:
        if self.vector is None and self.keys.text is not None:
            try:
                self.vector = await self.cache.embedder(self.settings.semantic.embedder).embed(self.keys.text)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.cache.counts["errors"] += 1
                log.warning("cache: embedding with %s failed: %s", self.settings.semantic.embedder, exc)
        return self.vector

    async def _find_similar(self) -> None:
        c, sem = self.cache, self.settings.semantic
        assert self.context is not None and self.keys.text is not None
        records = await c._io("vectors", c.backend.vectors(self.context))
        if records is FAILED:
            return
        if not records:
            await self._embed()  # for the store after the call
            return
        vec = await self._embed()
        if vec is None:
            return
        keys, texts, rows = [], [], []
        for key, rec in records:
            try:
                text, v = unpack_vector(rec)
            except Exception:
                continue
            if v.shape != vec.shape:
                continue
            keys.append(key)
            texts.append(text)
            rows.append(v)
        if not rows:
            return
        sims = np.stack(rows) @ vec
        for i in np.argsort(-sims)[:SEMANTIC_TOP]:
            sim = float(sims[i])
            if sim < sem.threshold:
                break
            if sem.term_check and terms_conflict(self.keys.text, texts[i]):
                continue
            found = c._decode(await c._io("get", c.backend.get(keys[i])), self.directive)
            if found is None:  # the entry expired or was evicted: forget its vector
                await c._io("delete", c.backend.delete(keys[i], self.context))
                continue
            self.hit = Hit(found[0], keys[i], "semantic", found[1], round(sim, 4))
            return

    # ---- a hit -------------------------------------------------------------------------
    def response(self) -> dict[str, Any]:
        """The cached answer as a new completion (its own id and creation time)."""
        assert self.hit is not None
        resp = dict(self.hit.entry["response"])
        resp["id"] = new_completion_id()
        resp["object"] = "chat.completion"
        resp["created"] = now()
        return resp

    @staticmethod
    def chunks(resp: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
        """The answer as stream chunks: per choice one delta with the whole message, one with
        its finish reason; then usage when the client asked for it."""
        base = {"id": resp["id"], "object": "chat.completion.chunk", "created": resp["created"],
                "model": resp.get("model")}
        if resp.get("system_fingerprint"):
            base["system_fingerprint"] = resp["system_fingerprint"]
        if include_usage:
            base["usage"] = None
        for ch in resp.get("choices") or []:
            i = ch.get("index", 0)
            msg = ch.get("message") or {}
            delta: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
            if msg.get("tool_calls"):
                delta["tool_calls"] = [{"index": k, **tc} for k, tc in enumerate(msg["tool_calls"])]
            yield {**base, "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}]}
            yield {**base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                        "finish_reason": ch.get("finish_reason") or "stop"}]}
        if include_usage and resp.get("usage"):
            yield {**base, "choices": [], "usage": resp["usage"]}

    def record_hit(self, span: Span, resp: dict[str, Any]) -> None:
        """Span fields of a hit: the original's lineage and tokens (input counted as cached),
        cost 0.0 because a cached answer is known to be free."""
        assert self.hit is not None
        e = self.hit.entry
        span.provider, span.model, span.response_model = e.get("provider"), e.get("model"), e.get("response_model")
        span.completion_id = resp.get("id")
        span.input_tokens, span.output_tokens = e.get("input_tokens"), e.get("output_tokens")
        span.cached_tokens = e.get("input_tokens")
        span.cost_usd = 0.0
        span.output = resp
        hit: dict[str, Any] = {"kind": self.hit.kind, "age_s": round(self.hit.age_s, 3),
                               "trace_id": e.get("trace_id"), "span_id": e.get("span_id"),
                               "saved_usd": e.get("cost_usd")}
        if self.hit.similarity is not None:
            hit["similarity"] = self.hit.similarity
            hit["matched"] = e.get("text")
            hit["entry_key"] = self.hit.key[:16]
        span.attributes["cache_hit"] = hit
        span.attributes.setdefault("attempts", [])
        span.attributes.setdefault("fallbacks", 0)

    # ---- a miss ------------------------------------------------------------------------
    def store(self, resp: dict[str, Any] | None, span: Span) -> None:
        """Store a successful answer, beside the request. ``span`` was already recorded:
        it is only read here."""
        c = self.cache
        if not self.directive.write or self.hit is not None:
            return
        if uncacheable(resp, span) is not None:
            c.counts["not_stored"] += 1
            return
        assert resp is not None
        entry = {
            "v": ENTRY_VERSION, "created_at": c.clock(), "alias": self.alias, "response": resp,
            "provider": span.provider, "model": span.model, "response_model": span.response_model,
            "input_tokens": span.input_tokens, "output_tokens": span.output_tokens, "cost_usd": span.cost_usd,
            "trace_id": span.trace_id, "span_id": span.span_id,
        }
        if self.context is not None:
            entry["text"] = self.keys.text
        try:
            value = orjson.dumps(entry, default=str)
        except (TypeError, orjson.JSONEncodeError):
            c.counts["not_stored"] += 1
            return
        if len(value) > c.cfg.max_entry_bytes:
            c.counts["not_stored"] += 1
            return
        c._spawn(self._write(value))

    async def _write(self, value: bytes) -> None:
        c, ttl = self.cache, self.settings.ttl_s
        if await c._io("set", c.backend.set(self.keys.exact, value, ttl, self.context)) is FAILED:
            return
        c.counts["stored"] += 1
        if self.context is not None and self.keys.text is not None:
            vec = await self._embed()
            if vec is not None:
                record = pack_vector(self.keys.text, vec)
                await c._io("add_vector", c.backend.add_vector(self.context, self.keys.exact, record, ttl,
                                                               self.settings.semantic.max_candidates))
