"""Money from an explicit price table (USD per million tokens). Unknown is None, never 0."""

from __future__ import annotations

from .config import PriceEntry


def cost_usd(
    prices: dict[str, PriceEntry],
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    cached_tokens: int | None = None,
    *,
    fallback_model: str | None = None,
) -> float | None:
    """Cost of one call, or None when the model has no price or tokens are unknown.

    ``model`` is the version the provider reported; ``fallback_model`` the configured
    target name, tried when the reported version has no entry of its own.
    """
    price = prices.get(model) if model else None
    if price is None and fallback_model:
        price = prices.get(fallback_model)
    if price is None or input_tokens is None or output_tokens is None:
        return None
    cached = cached_tokens or 0
    cached = min(cached, input_tokens)
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    total = (input_tokens - cached) * price.input + cached * cached_rate + output_tokens * price.output
    return round(total / 1_000_000, 10)
