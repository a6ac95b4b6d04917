"""Configuration of releases: prompt cache, pinning, shadow, experiments, cascades, intent routers.

Only pydantic here (``shipyard.config`` imports these models, so nothing from the rest of
the package may be imported at module level). Cross-references — an alias, a provider or
a router named somewhere else in the file — are checked by :func:`validate_releases`
once the whole config has parsed, and every error names its key.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
DEFAULT_REFUSALS = [
    r"(?i)^\s*(i'?m|i am)\s+(sorry|afraid)\b.{0,80}\b(can(?:no|')t|cannot|unable|not able)\b",
    r"(?i)^\s*i\s+(can(?:no|')t|cannot|won'?t)\s+(help|assist|comply|do that|provide)",
    r"(?i)^\s*(as an ai|i'?m just an ai)\b",
    r"(?i)^\s*unfortunately,? i (can(?:no|')t|cannot|am unable)",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {v!r}: {exc}") from None
    return v


def check_prompt_ref(ref: str) -> str:
    """``name``, ``name@label``, ``name@3`` or ``name@latest`` (without the ``prompt:`` prefix)."""
    name, _, sel = ref.partition("@")
    if not NAME_RE.match(name):
        raise ValueError(f"{ref!r} is not a prompt reference (name[@label|@version])")
    if sel and not (sel.isdigit() or LABEL_RE.match(sel)):
        raise ValueError(f"{ref!r}: {sel!r} is neither a version number nor a label")
    return ref


# ---- top-level blocks ---------------------------------------------------------------------
class PromptsConfig(_Strict):
    """``prompts:`` — the in-process cache of the prompt registry and label policy."""

    refresh_s: float = Field(30.0, gt=0)
    negative_ttl_s: float = Field(5.0, ge=0)
    default_label: str = "production"
    protected_labels: list[str] = Field(default_factory=lambda: ["production"])
    variables_key: str = "variables"
    warm_limit: int = Field(1000, ge=0)

    @field_validator("default_label")
    @classmethod
    def _label(cls, v: str) -> str:
        if v != "latest" and not LABEL_RE.match(v):
            raise ValueError("must be a label: lower-case letters, digits, '_' or '-'")
        return v


class ReleasesConfig(_Strict):
    """``releases:`` — admin access, model pinning and the promotion gate."""

    admin_token: str | None = None
    pinning: Literal["warn", "error", "off"] = "warn"
    rewrite_floating: bool = False
    gate_command: list[str] | None = None
    gate_timeout_s: float = Field(1800.0, gt=0)

    @field_validator("admin_token")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None


# ---- what a variant, a shadow candidate or a cascade step runs ---------------------------
class Override(_Strict):
    """Run something other than the alias's own targets: another ``alias``, one direct target
    (``provider`` + ``model``), a prompt (``prompt: name@label``, or ``prompt_label``: the
    request's own prompt under another label/version), with optional ``params``."""

    alias: str | None = None
    provider: str | None = None
    model: str | None = None
    prompt: str | None = None
    prompt_label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Override:
        if (self.provider is None) != (self.model is None):
            raise ValueError("'provider' and 'model' go together (one direct target)")
        if self.provider is not None and self.alias is not None:
            raise ValueError("give either 'alias' or 'provider' + 'model', not both")
        if self.prompt is not None and self.prompt_label is not None:
            raise ValueError("give either 'prompt' or 'prompt_label', not both")
        if self.prompt is not None:
            check_prompt_ref(self.prompt)
        if self.prompt_label is not None and not (self.prompt_label.isdigit() or self.prompt_label == "latest"
                                                  or LABEL_RE.match(self.prompt_label)):
            raise ValueError(f"prompt_label {self.prompt_label!r} is neither a label nor a version number")
        for key in ("model", "messages", "stream", "metadata"):
            if key in self.params:
                raise ValueError(f"params.{key}: cannot be overridden")
        return self

    @property
    def is_control(self) -> bool:
        return (self.alias is None and self.provider is None and self.prompt is None
                and self.prompt_label is None and not self.params)

    def describe(self) -> str:
        parts = []
        if self.alias:
            parts.append(f"alias {self.alias}")
        if self.provider:
            parts.append(f"{self.provider}/{self.model}")
        if self.prompt:
            parts.append(f"prompt {self.prompt}")
        if self.prompt_label:
            parts.append(f"prompt @{self.prompt_label}")
        if self.params:
            parts.append("params " + ",".join(f"{k}={v}" for k, v in sorted(self.params.items())))
        return "; ".join(parts) or "the alias as configured"


class ShadowCandidate(Override):
    name: str | None = None

    @model_validator(mode="after")
    def _something(self) -> ShadowCandidate:
        if self.is_control:
            raise ValueError("a shadow candidate needs 'alias', 'provider' + 'model', 'prompt', "
                             "'prompt_label' or 'params'")
        return self

    @property
    def label(self) -> str:
        return self.name or self.describe()


class ShadowConfig(_Strict):
    """``models.<alias>.shadow`` — mirror a sample of the alias's traffic to candidates."""

    sample: float = Field(ge=0, le=1)
    candidates: list[ShadowCandidate] = Field(min_length=1)
    evaluators: list[Literal["exact", "json", "similarity"]] = Field(
        default_factory=lambda: ["exact", "json", "similarity"])
    judge: str | None = None
    judge_sample: float = Field(1.0, ge=0, le=1)
    max_concurrency: int = Field(2, ge=1, le=256)
    queue_size: int = Field(100, ge=1, le=1_000_000)
    streams: bool = True

    @model_validator(mode="after")
    def _unique(self) -> ShadowConfig:
        labels = [c.label for c in self.candidates]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"candidates: duplicate candidate {min(dup)!r}; give each a 'name'")
        return self


class Variant(Override):
    name: str
    weight: float = Field(ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be a simple name (letters, digits, '_', '-', '.')")
        return v


class ExperimentConfig(_Strict):
    """``models.<alias>.experiment`` — weighted variants with sticky assignment."""

    name: str
    variants: list[Variant] = Field(min_length=2)
    unit: Literal["user", "session", "request"] = "user"
    control: str | None = None
    mode: Literal["fixed", "thompson"] = "fixed"
    metric: Literal["success", "evaluator", "feedback"] = "success"
    min_weight: float = Field(0.05, ge=0, lt=1)
    update_interval_s: float = Field(60.0, gt=0)
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be a simple name (letters, digits, '_', '-', '.')")
        return v

    @model_validator(mode="after")
    def _weights(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"variants: duplicate variant name {min(dup)!r}")
        total = sum(v.weight for v in self.variants)
        if not any(v.weight > 0 for v in self.variants):
            raise ValueError("variants: every weight is 0; at least one variant must get traffic")
        if not (math.isclose(total, 1.0, abs_tol=1e-6) or math.isclose(total, 100.0, abs_tol=1e-4)):
            raise ValueError(f"variants: weights sum to {total:g}; they must sum to 100 (percentages) "
                             "or 1 (fractions)")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control: {self.control!r} is not one of the variants ({', '.join(names)})")
        if self.mode == "thompson" and self.min_weight * len(self.variants) > 1:
            raise ValueError("min_weight: too large for this many variants (min_weight x variants must be <= 1)")
        return self

    @property
    def control_name(self) -> str:
        return self.control or self.variants[0].name

    def fractions(self) -> dict[str, float]:
        total = sum(v.weight for v in self.variants)
        return {v.name: v.weight / total for v in self.variants}


class CascadeStep(_Strict):
    alias: str | None = None
    provider: str | None = None
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> CascadeStep:
        if (self.provider is None) != (self.model is None):
            raise ValueError("'provider' and 'model' go together (one direct target)")
        if (self.alias is None) == (self.provider is None):
            raise ValueError("give either 'alias' or 'provider' + 'model'")
        return self

    def describe(self) -> str:
        return f"alias {self.alias}" if self.alias else f"{self.provider}/{self.model}"


class EscalateOn(_Strict):
    error: bool = True
    empty: bool = True
    refusal: bool = True
    json_: bool | Literal["auto"] = Field("auto", alias="json")
    schema_: bool = Field(True, alias="schema")
    regex: str | None = None
    truncated: bool = False
    content_filter: bool = True
    min_confidence: float | None = Field(None, gt=0, le=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("regex")
    @classmethod
    def _re(cls, v: str | None) -> str | None:
        return v if v is None else _check_regex(v)


class CascadeConfig(_Strict):
    """``models.<alias>.cascade`` — the alias's own targets first, then escalate."""

    escalate_to: list[CascadeStep] = Field(min_length=1)
    escalate_on: EscalateOn = EscalateOn()
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))

    @field_validator("refusal_patterns")
    @classmethod
    def _res(cls, v: list[str]) -> list[str]:
        return [_check_regex(p) for p in v]


class Intent(_Strict):
    route: str
    patterns: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _res(cls, v: list[str]) -> list[str]:
        return [_check_regex(p) for p in v]

    @model_validator(mode="after")
    def _some(self) -> Intent:
        if not (self.patterns or self.keywords or self.examples):
            raise ValueError("an intent needs 'patterns', 'keywords' or 'examples'")
        return self


class IntentRouterConfig(_Strict):
    """``routers.<name>`` — a virtual model: classify the request, then send it to the intent's route."""

    type: Literal["intent"] = "intent"
    intents: dict[str, Intent] = Field(min_length=1)
    default: str
    threshold: float = Field(0.2, ge=-1, le=1)
    embeddings: str | None = None
    text: Literal["last_user", "user", "all"] = "last_user"
    description: str | None = None


# ---- cross-references ---------------------------------------------------------------------
def _route_ok(route: str, models: set[str]) -> str | None:
    if route.startswith("prompt:"):
        try:
            check_prompt_ref(route[len("prompt:"):])
        except ValueError as exc:
            return str(exc)
        return None
    if route not in models:
        return f"unknown model alias {route!r} (configured: {', '.join(sorted(models)) or 'none'})"
    return None


def _override_errors(where: str, o: Any, models: set[str], providers: set[str]) -> list[str]:
    errs = []
    alias = getattr(o, "alias", None)
    if alias is not None and alias not in models:
        errs.append(f"{where}.alias: unknown model alias {alias!r} (configured: {', '.join(sorted(models))})")
    provider = getattr(o, "provider", None)
    if provider is not None and provider not in providers:
        errs.append(f"{where}.provider: unknown provider {provider!r} "
                    f"(configured: {', '.join(sorted(providers)) or 'none'})")
    return errs


def validate_releases(cfg: Any) -> None:
    """Check every name the release features refer to; raise ConfigError naming the key."""
    from ..errors import ConfigError

    models, providers = set(cfg.models), set(cfg.providers)
    errs: list[str] = []
    for alias, m in cfg.models.items():
        if m.shadow is not None:
            for i, c in enumerate(m.shadow.candidates):
                errs += _override_errors(f"models.{alias}.shadow.candidates[{i}]", c, models, providers)
            if m.shadow.judge is not None and m.shadow.judge not in models:
                errs.append(f"models.{alias}.shadow.judge: unknown model alias {m.shadow.judge!r}")
        if m.experiment is not None:
            for i, v in enumerate(m.experiment.variants):
                errs += _override_errors(f"models.{alias}.experiment.variants[{i}]", v, models, providers)
                if v.alias == alias:
                    errs.append(f"models.{alias}.experiment.variants[{i}].alias: a variant cannot name its own "
                                "alias (leave 'alias' out for the control)")
        if m.cascade is not None:
            for i, s in enumerate(m.cascade.escalate_to):
                errs += _override_errors(f"models.{alias}.cascade.escalate_to[{i}]", s, models, providers)
                if s.alias == alias:
                    errs.append(f"models.{alias}.cascade.escalate_to[{i}].alias: cannot escalate to itself")
    names = [e.name for m in cfg.models.values() if m.experiment is not None for e in [m.experiment]]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        errs.append(f"models: experiment name {min(dup)!r} is used by more than one alias")
    for name, r in cfg.routers.items():
        if name in models:
            errs.append(f"routers.{name}: the name is already a model alias")
        if name.startswith("prompt:") or not NAME_RE.match(name):
            errs.append(f"routers.{name}: not a valid router name")
        for iname, intent in r.intents.items():
            err = _route_ok(intent.route, models)
            if err:
                errs.append(f"routers.{name}.intents.{iname}.route: {err}")
        err = _route_ok(r.default, models)
        if err:
            errs.append(f"routers.{name}.default: {err}")
        if r.embeddings is not None and r.embeddings not in models:
            errs.append(f"routers.{name}.embeddings: unknown model alias {r.embeddings!r}")
    for label in cfg.prompts.protected_labels:
        if not LABEL_RE.match(label):
            errs.append(f"prompts.protected_labels: {label!r} is not a label")
    if errs:
        raise ConfigError("invalid configuration: " + "; ".join(errs))
