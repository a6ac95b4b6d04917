"""Provider types by name. A new wire format is one module plus one line here."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from .base import Provider

# type name -> "module:Class"; modules import lazily so optional extras stay optional.
PROVIDER_TYPES: dict[str, str] = {
    "openai": "shipyard.providers.openai:OpenAIProvider",
    "anthropic": "shipyard.providers.anthropic:AnthropicProvider",
    "llama_cpp": "shipyard.providers.llama_cpp:LlamaCppProvider",
}


def provider_class(type_name: str) -> type[Provider]:
    try:
        target = PROVIDER_TYPES[type_name]
    except KeyError:
        raise ConfigError(
            f"unknown provider type {type_name!r} (known: {', '.join(sorted(PROVIDER_TYPES))})"
        ) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def validate_provider_options(name: str, block: dict[str, Any]):
    """Validate one ``providers.NAME`` block with its type's own Options model."""
    from ..config import format_validation_error

    if not isinstance(block, dict):
        raise ConfigError(f"invalid configuration: providers.{name}: must be a mapping")
    type_name = block.get("type")
    if not isinstance(type_name, str):
        raise ConfigError(f"invalid configuration: providers.{name}.type: required key is missing")
    try:
        cls = provider_class(type_name)
    except ConfigError as exc:
        raise ConfigError(f"invalid configuration: providers.{name}.type: {exc}") from None
    try:
        return cls, cls.Options.model_validate(block)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=f"providers.{name}")) from None


def build_provider(name: str, block: dict[str, Any]) -> Provider:
    cls, options = validate_provider_options(name, block)
    return cls(name, options)
