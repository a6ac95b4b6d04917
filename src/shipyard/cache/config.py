"""The ``cache`` block and the per-alias ``models.<alias>.cache`` settings (docs/configuration.md).

Imported by ``shipyard.config``; keeps no other import so config loading stays light.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SemanticCacheConfig(_Strict):
    """Serve an answer cached for a *similar* last user message (same system prompt,
    earlier turns and parameters)."""

    enabled: bool = False
    # cosine similarity a cached question must reach; the built-in embedder compares wording,
    # so the default is high (see docs/operations.md#caching for measured pairs)
    threshold: float = Field(0.92, gt=0, le=1)
    embedder: str = "builtin"  # "builtin" or the name of an embeddings alias
    # also refuse a match whose numbers or negations differ, or where each side has a content
    # word the other lacks ("France" vs "Germany")
    term_check: bool = True
    max_candidates: int = Field(1000, ge=1, le=100_000)  # cached questions kept (and compared) per context


class AliasCacheConfig(_Strict):
    """``models.<alias>.cache``: every key left out takes the top-level ``cache`` value."""

    enabled: bool = False
    ttl_s: float = Field(3600.0, gt=0)
    deterministic_only: bool = True
    semantic: SemanticCacheConfig = SemanticCacheConfig()


class CacheConfig(_Strict):
    """The response cache: where entries live and the defaults for every alias."""

    enabled: bool = False  # the default for aliases; models.<alias>.cache.enabled overrides it
    backend: Literal["memory", "sqlite", "redis"] = "memory"
    ttl_s: float = Field(3600.0, gt=0)
    deterministic_only: bool = True  # only temperature 0 or a fixed seed (metadata.cache "yes" overrides)
    max_entries: int = Field(10_000, ge=1)  # memory: LRU bound; sqlite: trimmed to this
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # memory: LRU bound on stored bytes
    max_entry_bytes: int = Field(1024 * 1024, ge=256)  # larger answers are not cached
    path: str = "shipyard-cache.db"  # sqlite: its own database file
    timeout_ms: float = Field(250.0, gt=0)  # a slower backend read counts as a miss
    semantic: SemanticCacheConfig = SemanticCacheConfig()

    def for_alias(self, alias_cfg: AliasCacheConfig | None) -> AliasCacheConfig:
        """The effective settings of one alias: its own keys over these defaults."""
        base: dict[str, Any] = {"enabled": self.enabled, "ttl_s": self.ttl_s,
                                "deterministic_only": self.deterministic_only, "semantic": self.semantic}
        if alias_cfg is not None:
            for k in alias_cfg.model_fields_set:
                if k == "semantic":
                    sem = alias_cfg.semantic
                    base["semantic"] = self.semantic.model_copy(
                        update={f: getattr(sem, f) for f in sem.model_fields_set})
                else:
                    base[k] = getattr(alias_cfg, k)
        return AliasCacheConfig(**base)


def validate_cache(cfg: Any) -> None:
    """Cross-key checks, naming the key: embedder aliases exist, redis needs a redis block."""
    from ..errors import ConfigError

    cache: CacheConfig = cfg.cache
    if cache.backend == "redis" and getattr(cfg, "redis", None) is None:
        raise ConfigError("invalid configuration: cache.backend: 'redis' needs a redis block (redis.url)")
    sems = [("cache.semantic", cache.semantic)]
    for alias, m in cfg.models.items():
        c = getattr(m, "cache", None)
        if c is not None and "semantic" in c.model_fields_set:
            sems.append((f"models.{alias}.cache.semantic", c.semantic))
    for where, sem in sems:
        if sem.embedder != "builtin" and sem.embedder not in cfg.models:
            known = ", ".join(sorted(cfg.models)) or "none"
            raise ConfigError(f"invalid configuration: {where}.embedder: {sem.embedder!r} is neither 'builtin' "
                              f"nor a configured alias (configured: {known})")
