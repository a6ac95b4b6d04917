"""Model pinning: targets should name exact (dated) model versions.

A floating name (``gpt-4o-mini``, ``claude-3-5-sonnet-latest``) silently changes behaviour
when the provider moves it. At start-up every target, shadow candidate, experiment variant
and cascade step is checked against a small table of floating -> dated names for the
OpenAI and Anthropic families (plus anything ending in ``-latest``): ``releases.pinning``
decides whether that is a warning, a start-up error, or ignored; ``rewrite_floating``
replaces known floating names with their dated version.

On every llm call the version the provider reports is recorded (``model_version``); when
it differs from a pinned target's model the span gets ``model_mismatch`` and a warning is
logged once per pair.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("shipyard.releases")

# floating name -> the dated version it pointed at when this table was written
FLOATING: dict[str, str] = {
    # OpenAI
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4-turbo": "gpt-4-turbo-2024-04-09",
    "gpt-4": "gpt-4-0613",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "o1": "o1-2024-12-17",
    "o1-mini": "o1-mini-2024-09-12",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
    # Anthropic
    "claude-3-5-sonnet-latest": "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
    "claude-3-opus-latest": "claude-3-opus-20240229",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-opus-4-0": "claude-opus-4-20250514",
}
_DATED = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{4})$")


def is_floating(model: str) -> bool:
    return model in FLOATING or model.endswith("-latest")


def dated(model: str) -> str | None:
    return FLOATING.get(model)


def expected_report(target_model: str, reported: str) -> bool:
    """Is ``reported`` what a call to ``target_model`` should report? Equal, or — for a
    floating name — a dated version of the same family."""
    if reported == target_model:
        return True
    if is_floating(target_model):
        stem = target_model.removesuffix("-latest")
        return reported.startswith(stem + "-") and bool(_DATED.search(reported))
    return False


def _targets(cfg: Any) -> list[tuple[str, str]]:
    """(config key, model) of every direct target the config names."""
    out = []
    for alias, m in cfg.models.items():
        for i, t in enumerate(m.targets):
            out.append((f"models.{alias}.targets[{i}]", t.model))
        if m.shadow is not None:
            for i, c in enumerate(m.shadow.candidates):
                if c.model:
                    out.append((f"models.{alias}.shadow.candidates[{i}]", c.model))
        if m.experiment is not None:
            for i, v in enumerate(m.experiment.variants):
                if v.model:
                    out.append((f"models.{alias}.experiment.variants[{i}]", v.model))
        if m.cascade is not None:
            for i, s in enumerate(m.cascade.escalate_to):
                if s.model:
                    out.append((f"models.{alias}.cascade.escalate_to[{i}]", s.model))
    return out


def check(cfg: Any) -> list[str]:
    """Warnings for floating names (empty when everything is pinned)."""
    out = []
    for key, model in _targets(cfg):
        if is_floating(model):
            d = dated(model)
            hint = f"pin '{d}'" if d else "pin a dated version"
            out.append(f"{key}: '{model}' is a floating model name; {hint} so behaviour cannot change under you")
    return out


def rewrite(engine: Any) -> list[str]:
    """Replace known floating names in the engine's routers with their dated versions."""
    done = []
    for alias, router in engine.routers.items():
        for t in router.targets:
            d = dated(t.model)
            if d:
                done.append(f"models.{alias}: {t.model} -> {d}")
                t.model = d
    return done


class MismatchWatch:
    """A span listener: record the reported version, flag a pinned target that reported another."""

    def __init__(self) -> None:
        self.warned: set[tuple[str, str]] = set()
        self.mismatches = 0

    def __call__(self, span: Any) -> None:
        if span.kind != "llm" or not span.model:
            return
        reported = span.response_model or span.model
        span.attributes["model_version"] = reported
        if reported == span.model:
            return
        if expected_report(span.model, reported):
            span.attributes["floating_model"] = span.model
            return
        self.mismatches += 1
        span.attributes["model_mismatch"] = {"pinned": span.model, "reported": reported}
        key = (span.model, reported)
        if key not in self.warned and len(self.warned) < 1000:
            self.warned.add(key)
            log.warning("releases: target %s/%s is pinned to '%s' but the provider reported '%s'",
                        span.provider, span.model, span.model, reported)
