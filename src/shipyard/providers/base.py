"""The provider interface: one small class per wire format.

A provider turns the canonical OpenAI-shaped request dict into a call on its backend and
returns OpenAI-shaped dicts. It raises :class:`~shipyard.errors.UpstreamError` for every
failure, with ``retryable``/``failover`` set so the router can decide what to do; it never
retries by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, ClassVar

from pydantic import BaseModel, ConfigDict


class ProviderOptions(BaseModel):
    """Keys every provider block accepts; subclasses add their own and forbid the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


@dataclass(slots=True, frozen=True)
class CallTimeouts:
    """Timeouts for one attempt against one target, in seconds."""

    total: float = 60.0
    connect: float = 5.0
    ttft: float | None = None  # streaming: time to the first chunk


class Provider:
    """Base class. Subclasses set ``type`` and ``Options`` and implement the calls."""

    type: ClassVar[str] = ""
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions

    def __init__(self, name: str, options: ProviderOptions) -> None:
        self.name = name
        self.options = options

    async def start(self) -> None:
        """Prepare connections or load a model. Called once before serving."""

    async def close(self) -> None:
        """Release connections and threads."""

    def ready(self) -> bool:
        """True when the provider can take calls (a local model has loaded)."""
        return True

    async def chat(self, body: dict[str, Any], timeouts: CallTimeouts) -> dict[str, Any]:
        """One non-streaming chat completion: an OpenAI ``chat.completion`` dict."""
        raise NotImplementedError

    def stream(self, body: dict[str, Any], timeouts: CallTimeouts) -> AsyncIterator[dict[str, Any]]:
        """A streaming chat completion: ``chat.completion.chunk`` dicts.

        Failures before the first chunk raise from the first ``__anext__``; the router
        relies on that to fail over transparently. When ``stream_options.include_usage``
        is set the last chunk carries ``usage`` (and empty ``choices``).
        The returned iterator must support ``aclose()`` to cancel the upstream call.
        """
        raise NotImplementedError

    async def embeddings(self, body: dict[str, Any], timeouts: CallTimeouts) -> dict[str, Any]:
        """An OpenAI embeddings ``list`` response dict."""
        from ..errors import UpstreamError

        raise UpstreamError(
            f"provider {self.name!r} (type {self.type}) does not support embeddings",
            status=400,
            retryable=False,
            failover=True,
            kind="unsupported",
        )
