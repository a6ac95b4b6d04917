"""EVAL.yaml: what to run (variants), on what (a dataset version and split), judged how
(evaluators), and against what gate.

Variants are the product of prompts x models x parameter sets, or an explicit list.
A prompt has an optional ``system`` template and a ``prompt`` template (a string: one
user message; or a list of messages), both Jinja2 with the case's variables. A case whose
input is a conversation (``messages``) is sent as-is; a variant's ``system`` replaces its
system message. Validated once, every error naming the key.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from .evaluators import Evaluator, build_evaluators


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptSpec(_Strict):
    system: str | None = None
    prompt: str | list[dict[str, Any]] | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _messages(cls, v: Any) -> Any:
        if isinstance(v, list):
            for i, m in enumerate(v):
                if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise ValueError(f"[{i}] must have a string 'role' and 'content'")
        return v


class VariantSpec(_Strict):
    name: str | None = None
    prompt: str | PromptSpec | None = None  # a name from `prompts`, or inline
    model: str
    params: dict[str, Any] = Field(default_factory=dict)


class DatasetRef(_Strict):
    name: str
    version: int | None = Field(None, ge=1)
    split: Literal["train", "holdout"] | None = None
    limit: int | None = Field(None, ge=1)


class GateSpec(_Strict):
    fail_under: float | None = Field(None, ge=0, le=1)
    max_error_rate: float | None = Field(None, ge=0, le=1)
    fail_on_regression: bool = False
    regression_tolerance: float = Field(0.0, ge=0, le=1)


class EvalSpec(_Strict):
    name: str
    description: str | None = None
    config: str | None = None  # a shipyard config (providers, aliases): the in-process gateway
    gateway_url: str | None = None  # or a running shipyard serve
    api_key: str | None = None
    store: str | None = None  # where datasets and results live (default: the config's store)
    dataset: DatasetRef
    system: str | None = None  # shorthand for one prompt named "default"
    prompt: str | list[dict[str, Any]] | None = None
    prompts: dict[str, PromptSpec] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)  # for every variant
    param_sets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    variants: list[VariantSpec] = Field(default_factory=list)
    evaluators: list[Any] = Field(default_factory=list)
    concurrency: int = Field(8, ge=1, le=1024)
    repeat: int = Field(1, ge=1, le=100)
    gate: GateSpec = GateSpec()
    baseline: str | None = None  # a run id to diff against
    ci: Literal["t", "bootstrap"] = "t"
    criteria: dict[str, str] = Field(default_factory=dict)  # criterion -> description (judge alignment)

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _shape(self) -> "EvalSpec":
        if self.config and self.gateway_url:
            raise ValueError("give either 'config' (in-process gateway) or 'gateway_url', not both")
        if (self.system or self.prompt) and self.prompts:
            raise ValueError("use either 'system'/'prompt' (one prompt) or 'prompts' (named prompts)")
        if self.variants and (self.models or self.param_sets):
            raise ValueError("use either 'variants' (an explicit list) or 'models'/'param_sets' (a matrix)")
        if not self.variants and not self.models:
            raise ValueError("no variants: give 'models' (with 'prompts') or an explicit 'variants' list")
        return self


@dataclass
class Variant:
    name: str
    model: str
    prompt_name: str | None
    prompt: PromptSpec | None
    params: dict[str, Any]
    _compiled: Any = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "prompt": self.prompt_name,
                "params": self.params,
                "template": self.prompt.model_dump(exclude_none=True) if self.prompt else None}


class TemplateError(ValueError):
    pass


def _env() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


_ENV: Any = None


def _template(src: str) -> Any:
    global _ENV
    if _ENV is None:
        _ENV = _env()
    try:
        return _ENV.from_string(src)
    except Exception as exc:  # jinja2.TemplateSyntaxError
        raise ConfigError(f"prompt template does not parse: {exc}") from None


def render_messages(variant: Variant, item: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages a variant sends for a dataset item; TemplateError when it cannot."""
    if variant._compiled is None:
        p = variant.prompt
        system = _template(p.system) if p and p.system else None
        if p is None or p.prompt is None:
            body = None
        elif isinstance(p.prompt, str):
            body = [("user", _template(p.prompt))]
        else:
            body = [(m["role"], _template(m["content"])) for m in p.prompt]
        variant._compiled = (system, body)
    system, body = variant._compiled
    inp = item.get("input") or {}
    variables = dict(inp.get("variables") or {})
    ctx = {**variables, "input": variables, "metadata": item.get("metadata") or {}, "id": item.get("id")}
    try:
        if "messages" in inp:
            if body is not None:
                raise TemplateError(f"variant {variant.name!r} has a prompt template but case {item.get('id')!r} "
                                    "is a conversation (messages); vary its system prompt with 'system:'")
            msgs = list(inp["messages"])
            if system is not None:
                msgs = [{"role": "system", "content": system.render(ctx)}] + [m for m in msgs if m.get("role") != "system"]
            return msgs
        if body is None:
            raise TemplateError(f"variant {variant.name!r} has no prompt template for case {item.get('id')!r}, "
                                "whose input is variables: give the variant a prompt (e.g. prompt: "
                                "\"{{ question }}\"; with a registry prompt, model: prompt:NAME, its template "
                                "comes first and gets the variables too)")
        out = [{"role": "system", "content": system.render(ctx)}] if system is not None else []
        out += [{"role": role, "content": t.render(ctx)} for role, t in body]
        return out
    except TemplateError:
        raise
    except Exception as exc:  # jinja2.UndefinedError and friends
        raise TemplateError(f"template error for case {item.get('id')!r}: {exc}") from None


@dataclass
class LoadedSpec:
    spec: EvalSpec
    base_dir: Path
    path: str | None
    variants: list[Variant]
    evaluators: list[Evaluator]
    raw: dict[str, Any]

    @property
    def pointwise(self) -> list[Evaluator]:
        return [e for e in self.evaluators if not e.pairwise]

    @property
    def pairwise(self) -> list[Evaluator]:
        return [e for e in self.evaluators if e.pairwise]

    def config_path(self) -> str | None:
        c = self.spec.config
        if c is None:
            return None
        p = Path(c)
        return str(p if p.is_absolute() else (self.base_dir / p))

    def digest(self) -> str:
        return hashlib.sha256(orjson.dumps(self.raw, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def _fmt(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ""
        for p in e["loc"]:
            loc += f"[{p}]" if isinstance(p, int) else (("." if loc else "") + str(p))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def expand_variants(spec: EvalSpec) -> list[Variant]:
    prompts: dict[str, PromptSpec | None] = dict(spec.prompts)
    if spec.system is not None or spec.prompt is not None:
        prompts = {"default": PromptSpec(system=spec.system, prompt=spec.prompt)}
    base_params = {k: v for k, v in spec.params.items()}
    out: list[Variant] = []
    if spec.variants:
        for i, v in enumerate(spec.variants):
            if isinstance(v.prompt, str):
                if v.prompt not in prompts:
                    raise ConfigError(f"eval spec: variants[{i}].prompt: unknown prompt {v.prompt!r} "
                                      f"(defined: {', '.join(prompts) or 'none'})")
                pname, p = v.prompt, prompts[v.prompt]
            elif v.prompt is not None:
                pname, p = f"inline{i}", v.prompt
            elif len(prompts) == 1:
                pname, p = next(iter(prompts.items()))
            elif not prompts:
                pname, p = None, None
            else:
                raise ConfigError(f"eval spec: variants[{i}].prompt: several prompts are defined; name one")
            name = v.name or "/".join(x for x in (pname, v.model) if x)
            params = {**base_params, **(p.params if p else {}), **v.params}
            out.append(Variant(name, v.model, pname, p, params))
    else:
        psets: dict[str, dict[str, Any]] = dict(spec.param_sets) or {"": {}}
        plist: list[tuple[str | None, PromptSpec | None]] = list(prompts.items()) or [(None, None)]
        for (pname, p), model, (sname, sparams) in itertools.product(plist, spec.models, psets.items()):
            name = "/".join(x for x in (pname, model, sname) if x)
            params = {**base_params, **(p.params if p else {}), **sparams}
            out.append(Variant(name, model, pname, p, params))
    names = [v.name for v in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"eval spec: two variants are named {dupes[0]!r}; give them distinct names")
    return out


def load_spec(source: str | Path | dict[str, Any], *, base_dir: Path | None = None) -> LoadedSpec:
    """Parse and validate an EVAL.yaml (path) or an already-parsed mapping."""
    from ..config import interpolate_env, read_yaml_file

    path: str | None = None
    if isinstance(source, dict):
        raw = source
        base = base_dir or Path.cwd()
    else:
        p = Path(source)
        raw = read_yaml_file(p, "eval spec")
        base = base_dir or p.resolve().parent
        path = str(p.resolve())
    if not isinstance(raw, dict):
        raise ConfigError("eval spec: the top level must be a mapping")
    raw = interpolate_env(raw)
    try:
        spec = EvalSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("invalid eval spec: " + _fmt(exc)) from None
    variants = expand_variants(spec)
    for v in variants:  # templates compile now: a syntax error fails at start
        if v.prompt is not None:
            for t in ([v.prompt.system] if v.prompt.system else []) + (
                    [v.prompt.prompt] if isinstance(v.prompt.prompt, str) else
                    [m["content"] for m in v.prompt.prompt or []]):
                _template(t)
    evaluators = build_evaluators(spec.evaluators, base)
    names = {v.name for v in variants}
    for e in evaluators:
        against = getattr(e.options, "against", None)
        for pair in getattr(e.options, "pairs", None) or []:
            for v in pair:
                if v not in names:
                    raise ConfigError(f"evaluators: {e.name}.pairs: unknown variant {v!r} "
                                      f"(variants: {', '.join(sorted(names))})")
        if e.pairwise and getattr(e.options, "pairs", None):
            continue
        if e.pairwise and against is not None and against not in names:
            raise ConfigError(f"evaluators: {e.name}.against: unknown variant {against!r} "
                              f"(variants: {', '.join(sorted(names))})")
        if e.pairwise and against is None and len(variants) != 2:
            raise ConfigError(f"evaluators: {e.name}.against: with {len(variants)} variants, name the baseline "
                              "variant to compare the others with")
    return LoadedSpec(spec, base, path, variants, evaluators, raw)
