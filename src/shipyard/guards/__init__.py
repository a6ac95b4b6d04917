"""Guards: input and output checks around a model call (docs/guardrails.md).

Guard types are small classes registered by name (``registry.py``) and listed per alias
in the config; ``pipeline.py`` runs them, applies the actions and records the spans.
"""

from __future__ import annotations

from typing import Any

from .base import Guard, GuardContext, GuardOptions, Verdict
from .registry import GuardSpecError, build_guard, register

__all__ = ["Guard", "GuardContext", "GuardOptions", "GuardSpecError", "Verdict", "build_guard", "register",
           "validate_guards"]


def validate_guards(cfg: Any) -> None:
    """Build every alias's guards once, so a bad spec stops start-up naming its key."""
    from ..errors import ConfigError
    from .pipeline import AliasGuards

    defs = dict(cfg.guards or {})
    from .registry import guard_class

    for name, spec in defs.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ConfigError(f"invalid configuration: guards.{name}: must be a mapping with a guard 'name'")
        try:
            stage = sorted(guard_class(spec["name"]).stages)[0]
        except KeyError:
            stage = "input"
        try:
            build_guard(spec, stage, f"guards.{name}")  # type: ignore[arg-type]
        except GuardSpecError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from None
    aliases = set(cfg.models)
    for alias, m in cfg.models.items():
        try:
            AliasGuards(alias, m.guards, defs, aliases)
        except GuardSpecError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from None
