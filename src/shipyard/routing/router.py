"""One alias: its targets in order, with retries, back-off and a breaker per target.

``Router.execute(op)`` runs ``op(target)`` against the first healthy target, retrying
retryable failures and falling over to the next target, and records every attempt.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from ..config import ModelAlias, Target
from ..errors import GatewayError, UpstreamError
from ..providers.base import CallTimeouts, Provider
from .backoff import delay_for
from .breaker import CLOSED, CircuitBreaker

T = TypeVar("T")


@dataclass(slots=True)
class Attempt:
    provider: str
    model: str
    outcome: str  # "ok" or an error kind: http_500, timeout, connection, breaker_open, ...
    status: int | None = None
    error: str | None = None
    latency_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "outcome": self.outcome,
            "status": self.status,
            "error": self.error,
            "latency_ms": self.latency_ms,
        }


@dataclass(slots=True)
class ResolvedTarget:
    provider: Provider
    model: str
    timeouts: CallTimeouts
    breaker: CircuitBreaker
    params: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"


class AllTargetsFailed(GatewayError):
    """Every target failed; the message names each one and why."""


def _summary(alias: str, attempts: list[Attempt]) -> str:
    per_target: dict[str, list[Attempt]] = {}
    for a in attempts:
        per_target.setdefault(f"{a.provider}/{a.model}", []).append(a)
    parts = []
    for label, atts in per_target.items():
        last = atts[-1]
        n = len([a for a in atts if a.outcome != "breaker_open"])
        tries = f" after {n} attempt{'s' if n != 1 else ''}" if n > 1 else ""
        parts.append(f"{label}: {last.error or last.outcome}{tries}")
    return f"All targets for model '{alias}' failed. " + "; ".join(parts)


class Router:
    def __init__(
        self,
        alias: str,
        cfg: ModelAlias,
        providers: dict[str, Provider],
        breakers: dict[str, CircuitBreaker],
    ) -> None:
        self.alias = alias
        self.cfg = cfg
        self.targets = [self._resolve(t, providers, breakers) for t in cfg.targets]

    def _resolve(self, t: Target, providers: dict[str, Provider], breakers: dict[str, CircuitBreaker]) -> ResolvedTarget:
        key = f"{t.provider}/{t.model}"
        breaker = breakers.get(key)
        if breaker is None:  # shared by every alias that uses the same target
            cb = self.cfg.circuit_breaker
            breaker = breakers[key] = CircuitBreaker(cb.failure_threshold, cb.cooldown_s)
        timeouts = CallTimeouts(
            total=t.timeout_s or self.cfg.timeout_s,
            connect=t.connect_timeout_s or self.cfg.connect_timeout_s,
            ttft=t.ttft_timeout_s or self.cfg.ttft_timeout_s,
        )
        return ResolvedTarget(providers[t.provider], t.model, timeouts, breaker, dict(t.params))

    async def execute(
        self,
        op: Callable[[ResolvedTarget], Awaitable[T]],
        attempts: list[Attempt],
    ) -> tuple[T, ResolvedTarget]:
        cfg = self.cfg
        for target in self.targets:
            name, model = target.provider.name, target.model
            if not target.breaker.allow():
                attempts.append(Attempt(name, model, "breaker_open",
                                        error=f"circuit open (next probe in {target.breaker.retry_in():.0f}s)"))
                continue
            for n in range(cfg.retries + 1):
                t0 = time.perf_counter()
                try:
                    result = await op(target)
                except UpstreamError as exc:
                    ms = round((time.perf_counter() - t0) * 1000, 3)
                    attempts.append(Attempt(name, model, exc.kind, exc.status, exc.message, ms))
                    if not exc.failover:  # the request itself is at fault: stop here
                        target.breaker.success()
                        raise GatewayError(
                            exc.message, status=exc.status or 400, type="invalid_request_error",
                            code="upstream_rejected",
                            details={"attempts": [a.to_dict() for a in attempts]},
                        ) from None
                    target.breaker.failure()
                    if not exc.retryable or n == cfg.retries or target.breaker.state != CLOSED:
                        break
                    if exc.retry_after is not None and exc.retry_after > cfg.max_retry_after_s:
                        break  # the provider asks for a longer wait than we accept: fall over
                    await asyncio.sleep(delay_for(n + 1, cfg.backoff, exc.retry_after))
                    continue
                except BaseException:
                    target.breaker.release()
                    raise
                attempts.append(Attempt(name, model, "ok", 200, None,
                                        round((time.perf_counter() - t0) * 1000, 3)))
                target.breaker.success()
                return result, target
        raise self.failure(attempts)

    def failure(self, attempts: list[Attempt]) -> AllTargetsFailed:
        """The error for a call where nothing succeeded: 503 when no target could be
        tried, 429 when every target was rate-limiting, else 502."""
        tried = [a for a in attempts if a.outcome != "breaker_open"]
        headers: dict[str, str] = {}
        if not tried:
            status, code = 503, "all_targets_unavailable"
            wait = min((t.breaker.retry_in() for t in self.targets), default=0)
            headers["retry-after"] = str(max(1, int(wait + 0.999)))
        elif all(a.status == 429 for a in tried):
            status, code = 429, "upstream_rate_limited"
        else:
            status, code = 502, "all_targets_failed"
        return AllTargetsFailed(
            _summary(self.alias, attempts),
            status=status,
            type="api_error" if status != 429 else "rate_limit_error",
            code=code,
            headers=headers,
            details={"attempts": [a.to_dict() for a in attempts]},
        )
