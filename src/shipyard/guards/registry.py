"""Guard types by name. Built-ins are listed here; ``register`` adds more (plugins, tests).

A guard spec is a mapping ``{name: <type>, ...options}`` (or just the type name as a
string). ``build_guard`` validates it with the type's own ``Options`` model and checks
that the stage and action make sense for that type, raising :class:`GuardSpecError`
with the path of the offending key.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from .base import Guard, Stage

BUILTIN: dict[str, str] = {
    "prompt_injection": "shipyard.guards.injection:PromptInjection",
    "pii": "shipyard.guards.pii:PII",
    "banned_topics": "shipyard.guards.topics:BannedTopics",
    "max_tokens": "shipyard.guards.size:MaxTokens",
    "json": "shipyard.guards.structured:JSONGuard",
    "json_schema": "shipyard.guards.structured:JSONSchemaGuard",
    "pydantic": "shipyard.guards.structured:PydanticGuard",
    "regex": "shipyard.guards.regex:RegexGuard",
    "groundedness": "shipyard.guards.groundedness:Groundedness",
    "toxicity": "shipyard.guards.toxicity:Toxicity",
    "llm_judge": "shipyard.guards.judge:LLMJudge",
}
_registered: dict[str, type[Guard]] = {}


class GuardSpecError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def register(cls: type[Guard]) -> type[Guard]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not cls.name:
        raise ValueError("a guard class needs a name")
    _registered[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _registered.pop(name, None)


def names() -> list[str]:
    return sorted(set(BUILTIN) | set(_registered))


def guard_class(name: str) -> type[Guard]:
    cls = _registered.get(name)
    if cls is not None:
        return cls
    target = BUILTIN.get(name)
    if target is None:
        raise KeyError(name)
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    _registered[name] = cls
    return cls


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def build_guard(spec: Any, stage: Stage, path: str, *, client: bool = False) -> Guard:
    """Validate one spec and build the guard. ``client``: the spec came from a request."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise GuardSpecError(path, "must be a guard name or a mapping with 'name'")
    name = spec.get("name")
    if not isinstance(name, str):
        raise GuardSpecError(f"{path}.name", "required key is missing")
    try:
        cls = guard_class(name)
    except KeyError:
        raise GuardSpecError(f"{path}.name", f"unknown guard {name!r} (known: {', '.join(names())})") from None
    if stage not in cls.stages:
        raise GuardSpecError(path, f"guard {name!r} cannot run on {stage} (only {'/'.join(sorted(cls.stages))})")
    try:
        options = cls.Options.model_validate(spec)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = _loc(tuple(e["loc"]))
        msg = "unknown key" if e["type"] == "extra_forbidden" else (
            "required key is missing" if e["type"] == "missing" else e["msg"].removeprefix("Value error, "))
        raise GuardSpecError(f"{path}.{where}" if where else path, msg) from None
    action = options.action or cls.default_action
    allowed = cls.allowed_actions(stage)
    if action not in allowed:
        raise GuardSpecError(f"{path}.action", f"{action!r} is not supported by {name!r} on {stage} "
                                               f"(use one of: {', '.join(sorted(allowed))})")
    if client and not cls.client_safe:
        raise GuardSpecError(f"{path}.name", f"guard {name!r} cannot be added per request")
    try:
        return cls(options, stage)
    except ValueError as exc:
        raise GuardSpecError(path, str(exc)) from None
