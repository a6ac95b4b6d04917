"""Typed configuration: YAML with ``${ENV}`` interpolation, validated once at start-up.

Every error names the key it is about (``models.chat.targets[1].provider: ...``). Provider
blocks are validated in two steps: ``type`` picks the provider class from the registry,
and that class's own ``Options`` model validates the rest, so a new provider type brings
its own keys without touching this module.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .cache.config import AliasCacheConfig, CacheConfig  # response cache (docs/operations.md#caching)
from .errors import ConfigError
from .releases.config import (  # releases (docs/releases.md)
    CascadeConfig, ExperimentConfig, IntentRouterConfig, PromptsConfig, ReleasesConfig, ShadowConfig,
)

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backoff(Strict):
    initial_s: float = Field(0.1, ge=0)
    max_s: float = Field(5.0, ge=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: bool = True


class CircuitBreakerConfig(Strict):
    failure_threshold: int = Field(5, ge=1)
    cooldown_s: float = Field(30.0, ge=0)


class Target(Strict):
    provider: str
    model: str
    timeout_s: float | None = Field(None, gt=0)
    connect_timeout_s: float | None = Field(None, gt=0)
    ttft_timeout_s: float | None = Field(None, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)


class ModelAlias(Strict):
    targets: list[Target] = Field(min_length=1)
    retries: int = Field(2, ge=0, le=10)
    timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    ttft_timeout_s: float | None = Field(None, gt=0)
    max_retry_after_s: float = Field(30.0, ge=0)
    backoff: Backoff = Backoff()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    fallback_response: str | None = None
    description: str | None = None
    guards: "GuardsConfig" = Field(default_factory=lambda: GuardsConfig())
    # releases (docs/releases.md): mirror traffic, A/B test, escalate cheap -> strong
    shadow: ShadowConfig | None = None
    experiment: ExperimentConfig | None = None
    cascade: CascadeConfig | None = None
    cache: AliasCacheConfig | None = None  # response cache: this alias's overrides of the top-level cache block


class GuardsConfig(Strict):
    """An alias's guards (docs/guardrails.md); each list item is a guard spec validated by
    the guard's own options in guards/registry.py."""

    input: list[str | dict[str, Any]] = Field(default_factory=list)
    output: list[str | dict[str, Any]] = Field(default_factory=list)
    on_error: Literal["fail_open", "fail_closed"] = "fail_open"
    timeout_ms: float = Field(200.0, gt=0)
    stream: Literal["buffer", "incremental"] = "buffer"
    stream_window_chars: int = Field(64, ge=8, le=4096)
    request_guards: list[str] | None = None  # guard types clients may add per request; None = the safe default set
    structured_output: Literal["reask", "flag", "off"] = "reask"
    structured_output_attempts: int = Field(2, ge=0, le=10)


ModelAlias.model_rebuild()


class PriceEntry(Strict):
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(4000, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    trace_header: str = "x-shipyard-trace-id"


class RecordingConfig(Strict):
    enabled: bool = True
    queue_size: int = Field(10_000, ge=1)
    batch_size: int = Field(500, ge=1)
    flush_interval_s: float = Field(0.2, gt=0)
    capture_bodies: bool = True
    redact_keys: list[str] = Field(default_factory=list)
    redact_patterns: list[str] = Field(default_factory=list)
    max_payload_bytes: int = Field(64 * 1024, ge=256)
    retention_days: float | None = Field(None, gt=0)  # traces older than this are purged
    purge_interval_s: float = Field(3600.0, gt=0)

    @field_validator("redact_patterns")
    @classmethod
    def _compile(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {p!r}: {exc}") from None
        return v


class OtlpConfig(Strict):
    """OpenTelemetry export over OTLP/HTTP (docs/observability.md). On when ``endpoint`` is set."""

    enabled: bool = True
    endpoint: str | None = None  # base URL; spans go to {endpoint}/v1/traces
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(10.0, gt=0)
    capture_content: bool = True  # gen_ai.input.messages / gen_ai.output.messages

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v



class DriftConfig(Strict):
    """The scheduled drift check (docs/drift.md). On when ``reference`` is set."""

    reference: str | None = None  # dataset:NAME[@VERSION][:SPLIT] or window:30d..7d
    window: str = "1d"  # the current window: the last this long, up to each check
    interval_s: float = Field(3600.0, gt=0)
    thresholds: dict[str, float] = Field(default_factory=dict)  # overrides, see shipyard/drift/thresholds.py
    webhook_url: str | None = None  # POSTed a JSON alert when a check turns to drift (and back)

    @field_validator("reference", "window")
    @classmethod
    def _spec(cls, v: str | None, info: Any) -> str | None:
        if v is not None:
            from .drift.spec import parse_spec
            from .errors import GatewayError

            try:
                parse_spec(v, param=info.field_name)
            except GatewayError as exc:
                raise ValueError(exc.message) from None
        return v

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        from .drift.thresholds import resolve

        resolve(v)
        return v

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v


class FeedbackConfig(Strict):
    """Feedback, outcomes and the review queue (docs/feedback.md)."""

    # keys accepted as ``Authorization: Bearer <key>`` on POST /api/feedback and /api/outcomes
    # (until virtual keys replace them; see shipyard.feedback.auth.authorize_feedback)
    api_keys: list[str] = Field(default_factory=list)
    allow_anonymous: bool = False  # accept feedback without a key (trusted networks only)
    allow_origins: list[str] = Field(default_factory=list)  # CORS for browser front ends ("*" = any)
    review_sample_size: int = Field(50, ge=1, le=5000)  # traces in each day's review queue

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for k in v:
            if len(k) < 16:
                raise ValueError("each key must be at least 16 characters long")
        return v



# ---- access and shared state (docs/configuration.md#auth, #redis, #limits; docs/operations.md)
class AuthConfig(Strict):
    """Virtual API keys and the admin key. On when this block is present (and ``enabled``)."""

    enabled: bool = True
    admin_key: str | None = None  # all roles, no limits; use ${ENV}
    cache_ttl_s: float = Field(10.0, gt=0)  # a key lookup is re-read from the store after this long
    negative_cache_ttl_s: float = Field(2.0, ge=0)  # an unknown key is remembered as unknown this long
    max_stale_s: float = Field(3600.0, ge=0)  # store down: a cached key keeps working this long
    cache_size: int = Field(100_000, ge=1)
    lookup_timeout_s: float = Field(2.0, gt=0)  # a key-store read longer than this answers 503
    on_store_error: Literal["fail_open", "fail_closed"] = "fail_closed"  # /ready when the key store is down

    @field_validator("admin_key")
    @classmethod
    def _admin_key(cls, v: str | None) -> str | None:
        if v is not None and len(v) < 16:
            raise ValueError("must be at least 16 characters long")
        return v


class RedisConfig(Strict):
    """Shared state for many replicas: rate limits, budgets, circuit breakers, the cache."""

    url: str
    key_prefix: str = Field("shipyard", pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")
    timeout_s: float = Field(0.5, gt=0)
    connect_timeout_s: float = Field(0.5, gt=0)
    max_connections: int = Field(256, ge=1)
    retry_interval_s: float = Field(1.0, gt=0)  # after a failure, Redis is not tried again for this long
    health_interval_s: float = Field(2.0, gt=0)
    on_error: Literal["fail_open", "fail_closed"] = "fail_open"
    share_breakers: bool = True
    breaker_sync_s: float = Field(1.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", v):
            raise ValueError("must be a redis://host:port/db, rediss://... or unix:///path URL")
        return v


class LimitSpec(Strict):
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    usd_per_day: float | None = Field(None, ge=0)
    usd_per_month: float | None = Field(None, ge=0)


class LimitsConfig(Strict):
    backend: Literal["auto", "memory", "redis"] = "auto"  # auto: redis when a redis block is configured
    default_max_tokens: int = Field(1024, ge=1)  # output estimate when a request sets no max_tokens
    chars_per_token: float = Field(4.0, gt=0)  # prompt estimate: JSON characters / this
    reservation_ttl_s: float = Field(900.0, gt=0)  # an unsettled reservation is released after this
    teams: dict[str, LimitSpec] = Field(default_factory=dict)  # limits shared by every key of a team
# ---- end access and shared state


class Config(Strict):
    store: str = "sqlite:///shipyard.db"
    server: ServerConfig = ServerConfig()
    recording: RecordingConfig = RecordingConfig()
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    models: dict[str, ModelAlias] = Field(default_factory=dict)
    prices: dict[str, PriceEntry] = Field(default_factory=dict)
    otlp: OtlpConfig = OtlpConfig()
    guards: dict[str, dict[str, Any]] = Field(default_factory=dict)  # named guard specs, see docs/guardrails.md
    # releases (docs/releases.md): prompt registry cache, pinning/admin/gate, intent routers
    prompts: PromptsConfig = PromptsConfig()
    releases: ReleasesConfig = ReleasesConfig()
    routers: dict[str, IntentRouterConfig] = Field(default_factory=dict)
    drift: DriftConfig = DriftConfig()  # scheduled drift check (docs/drift.md)
    feedback: FeedbackConfig = FeedbackConfig()  # feedback API keys, review queue (docs/feedback.md)
    cache: CacheConfig = CacheConfig()  # response cache (docs/configuration.md#cache)

    # ---- access and shared state: virtual keys, Redis, rate limits and budgets
    auth: AuthConfig | None = None
    redis: RedisConfig | None = None
    limits: LimitsConfig = LimitsConfig()
    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        if v.startswith(("postgresql://", "postgres://")):
            from urllib.parse import urlsplit

            try:
                parts = urlsplit(v)
                parts.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError:
                raise ValueError("must be a valid postgresql://user:pass@host:port/db URL") from None
            if not parts.hostname and "host=" not in parts.query:
                raise ValueError("a postgresql:// URL needs a host: postgresql://user:pass@host:port/db")
            return v
        if v.startswith(("clickhouse://", "clickhouses://")):  # ClickHouse (store/clickhouse.py)
            from .store.clickhouse import parse_url

            parse_url(v)  # raises ValueError naming what is wrong
            return v
        if not v.startswith("sqlite://") and v not in (":memory:", "none"):
            raise ValueError("must be a sqlite:///path URL, a postgresql://user:pass@host:port/db URL, "
                             "a clickhouse://user:pass@host:8123/db URL, ':memory:' or 'none'")
        return v

    @model_validator(mode="after")
    def _targets_name_providers(self) -> "Config":
        for alias, m in self.models.items():
            for i, t in enumerate(m.targets):
                if t.provider not in self.providers:
                    known = ", ".join(sorted(self.providers)) or "none"
                    raise ValueError(
                        f"models.{alias}.targets[{i}].provider: unknown provider "
                        f"{t.provider!r} (configured: {known})"
                    )
        return self

    @model_validator(mode="after")
    def _access_needs(self) -> "Config":  # access: keys live in the store; limits.backend redis needs redis
        if self.auth is not None and self.auth.enabled and self.store == "none":
            raise ValueError("auth: virtual keys live in the store; configure store: sqlite:///... or "
                             "postgresql://... (not none)")
        if self.limits.backend == "redis" and self.redis is None:
            raise ValueError("limits.backend: 'redis' needs a redis block (redis.url)")
        return self

    def config_hash(self) -> str:
        """A short stable hash of the effective config, with secrets left out."""
        data = self.model_dump(mode="json")
        for p in data.get("providers", {}).values():
            p.pop("api_key", None)
        data.get("feedback", {}).pop("api_keys", None)  # feedback: secrets stay out of the hash
        if data.get("auth"):  # access: the admin key and the Redis URL (may hold a password)
            data["auth"].pop("admin_key", None)
        if data.get("redis"):
            data["redis"].pop("url", None)
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in exc.errors():
        where = _loc(tuple(e["loc"]))
        if prefix:
            where = f"{prefix}.{where}" if where else prefix
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            msg = e["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            lines.append(f"{where}: {msg}" if where else msg)
    return "invalid configuration: " + "; ".join(lines)


def interpolate_env(data: Any, path: str = "", env: dict[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    env = os.environ if env is None else env
    if isinstance(data, dict):
        return {k: interpolate_env(v, f"{path}.{k}" if path else str(k), env) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate_env(v, f"{path}[{i}]", env) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set (needed by {path or 'config'})")

        return _ENV_RE.sub(sub, data)
    return data


def default_config() -> dict[str, Any]:
    """The embedded default: a SQLite store here and Gemma 3 270M in-process."""
    return {
        "store": "sqlite:///shipyard.db",
        "providers": {"local": {"type": "llama_cpp"}},
        "models": {
            "local": {
                "targets": [{"provider": "local", "model": "gemma-3-270m-q4_k_m"}],
                "retries": 0,
                "timeout_s": 300,
                "description": "Gemma 3 270M (Q4_K_M) run in-process through llama.cpp",
            }
        },
    }


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """A YAML file parsed but not validated (``{}`` when empty); ConfigError naming ``what``
    and the file when it cannot be read or is not YAML."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None


def load_config(source: str | Path | dict[str, Any] | Config | None = None) -> Config:
    """Load and validate config from a path, a dict, or the embedded default (None)."""
    if isinstance(source, Config):
        return source
    if source is None:
        data: Any = default_config()
    elif isinstance(source, dict):
        data = source
    else:
        data = read_yaml_file(Path(source))
    if not isinstance(data, dict):
        raise ConfigError("invalid configuration: the top level must be a mapping")
    data = interpolate_env(data)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    from .providers.registry import validate_provider_options

    for name, block in cfg.providers.items():
        validate_provider_options(name, block)
    from .guards import validate_guards

    validate_guards(cfg)
    from .releases.config import validate_releases

    validate_releases(cfg)
    from .cache.config import validate_cache

    validate_cache(cfg)
    return cfg

