"""Rate limits and budgets for a request: what applies, the estimate, admission and settling.

For each request of a key the limits that apply are the key's own (rpm, tpm, usd_per_day,
usd_per_month) and its team's (``limits.teams``). Admission reserves, in one atomic step on
the backend (Redis across replicas, or this process): 1 request against each rpm, the
estimated tokens against each tpm, and the estimated cost against each budget window. The
returned :class:`Lease` is settled once the call has finished and its real tokens and cost
are known (the span's), moving tpm and budgets from the estimate to the truth.

The estimate: prompt tokens = characters of the JSON ``messages`` / ``limits.chars_per_token``;
output tokens = ``max_completion_tokens`` or ``max_tokens`` (else ``limits.default_max_tokens``),
times ``n``; cost = the dearest priced target of the alias at those tokens. A call whose
price is unknown reserves and spends 0 against a USD budget (its tokens still count).
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import GatewayError
from ..shared.redis import RedisUnavailable

log = logging.getLogger("shipyard.access")
NANO = 1_000_000_000


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"


class LimitsUnavailable(GatewayError):
    status = 503
    type = "api_error"


@dataclass(frozen=True, slots=True)
class Scope:
    id: str  # "key:key_…" or "team:NAME": where the counters live
    label: str  # for people: "key 'ci' (sk-sy-AbCd1234…)", "team 'red'"
    rpm: int | None = None
    tpm: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.usd_per_day, self.usd_per_month))


@dataclass(frozen=True, slots=True)
class Rate:
    scope: Scope
    name: str  # rpm | tpm
    limit: int
    cost: int


@dataclass(frozen=True, slots=True)
class Window:
    scope: Scope
    name: str  # usd_per_day | usd_per_month
    period: str  # 20250102 | 202501 (UTC)
    limit: int  # nano-dollars
    amount: int  # this request's reservation, nano-dollars
    reset_at: float  # when the period ends (epoch seconds)
    expire_at: float  # when the backend may forget it


def day_period(now: float) -> tuple[str, float]:
    d = dt.datetime.fromtimestamp(now, dt.timezone.utc).date()
    nxt = d + dt.timedelta(days=1)
    return d.strftime("%Y%m%d"), calendar.timegm(nxt.timetuple())


def month_period(now: float) -> tuple[str, float]:
    d = dt.datetime.fromtimestamp(now, dt.timezone.utc).date()
    nxt = dt.date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return d.strftime("%Y%m"), calendar.timegm(nxt.timetuple())


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_wait(seconds: float) -> str:
    s = max(0, int(math.ceil(seconds)))
    if s < 60:
        return f"{s}s"
    h, rem = divmod(s, 3600)
    m = rem // 60
    if h >= 48:
        return f"{h // 24}d {h % 24}h"
    return f"{h}h {m:02d}m" if h else f"{m}m {s % 60:02d}s"


def windows_for(scope: Scope, amount: int, now: float) -> list[Window]:
    out = []
    if scope.usd_per_day is not None:
        period, reset = day_period(now)
        out.append(Window(scope, "usd_per_day", period, round(scope.usd_per_day * NANO), amount, reset,
                          reset + 2 * 86400))
    if scope.usd_per_month is not None:
        period, reset = month_period(now)
        out.append(Window(scope, "usd_per_month", period, round(scope.usd_per_month * NANO), amount, reset,
                          reset + 7 * 86400))
    return out


@dataclass(slots=True)
class Demand:
    """What a request is estimated to use."""

    tokens: int
    cost_nanos: int


class Lease:
    """One admitted request's reservations; ``settle(span)`` exactly once (later calls are
    ignored), in the background so the response is not delayed."""

    __slots__ = ("limiter", "rates", "windows", "res_id", "demand", "done")

    def __init__(self, limiter: "Limiter", rates: list[Rate], windows: list[Window], res_id: str,
                 demand: Demand) -> None:
        self.limiter = limiter
        self.rates = rates
        self.windows = windows
        self.res_id = res_id
        self.demand = demand
        self.done = False

    def settle(self, span: Any) -> None:
        if self.done:
            return
        self.done = True
        tokens = None
        if span is not None and (span.input_tokens is not None or span.output_tokens is not None):
            tokens = (span.input_tokens or 0) + (span.output_tokens or 0)
        cost = getattr(span, "cost_usd", None) if span is not None else None
        self.limiter.settle_later(self, tokens, cost)

    async def run(self, coro: Any, span: Any) -> Any:
        """Await ``coro`` (an engine call that records ``span``) and settle afterwards."""
        try:
            return await coro
        finally:
            self.settle(span)

    async def run_stream(self, coro: Any, span: Any) -> Any:
        """Await ``engine.open_stream(...)``; settle when the stream ends (or fails)."""
        try:
            chunks = await coro
        except BaseException:
            self.settle(span)
            raise
        return self._relay(chunks, span)

    async def _relay(self, chunks: Any, span: Any) -> Any:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            try:  # close the engine's relay now (client gone: it cancels upstream and records the span)
                await chunks.aclose()
            finally:
                self.settle(span)


class Limiter:
    """Limits for keys; ``backend`` is a MemoryLimiter or a RedisLimiter."""

    def __init__(self, engine: Any, backend: Any, link: Any | None, metrics: Any) -> None:
        cfg = engine.config
        self.cfg = cfg.limits
        self.teams = cfg.limits.teams
        self.backend = backend
        self.link = link  # RedisLink or None
        self.policy = cfg.redis.on_error if cfg.redis is not None else "fail_closed"
        self.metrics = metrics
        self._tasks: set[asyncio.Task[Any]] = set()
        self._prices = self._alias_prices(engine)
        self._aliases = frozenset(cfg.models)
        self._settle_errors = 0

    # ---- estimates ---------------------------------------------------------------------
    @staticmethod
    def _alias_prices(engine: Any) -> dict[str | None, tuple[float, float]]:
        """Per alias, the dearest (input, output) USD per million tokens of its priced
        targets; None: over every configured price (for names resolved later: prompts,
        intent routers)."""
        prices = engine.config.prices
        out: dict[str | None, tuple[float, float]] = {}
        for alias, m in engine.config.models.items():
            known = [prices[t.model] for t in m.targets if t.model in prices]
            if known:
                out[alias] = (max(p.input for p in known), max(p.output for p in known))
        if prices:
            out[None] = (max(p.input for p in prices.values()), max(p.output for p in prices.values()))
        return out

    def estimate(self, model: str, body: dict[str, Any], *, embeddings: bool = False) -> Demand:
        if embeddings:
            inp = body.get("input")
            prompt = math.ceil(len(orjson.dumps(inp)) / self.cfg.chars_per_token)
            out = 0
        else:
            prompt = math.ceil(len(orjson.dumps(body.get("messages"))) / self.cfg.chars_per_token)
            mt = body.get("max_completion_tokens") or body.get("max_tokens")
            if not isinstance(mt, int) or isinstance(mt, bool) or mt <= 0:
                mt = self.cfg.default_max_tokens
            n = body.get("n") if isinstance(body.get("n"), int) and body.get("n") > 0 else 1
            out = mt * n
        price = self._prices.get(model if model in self._aliases else None)
        cost = 0.0 if price is None else (prompt * price[0] + out * price[1]) / 1_000_000
        return Demand(prompt + out, math.ceil(cost * NANO))

    # ---- scopes ------------------------------------------------------------------------
    def scopes(self, key: Any) -> list[Scope]:
        out = []
        ks = Scope("key:" + key.key_id, key.label, key.rpm, key.tpm, key.usd_per_day, key.usd_per_month)
        if ks.limited:
            out.append(ks)
        if key.team and key.team in self.teams:
            t = self.teams[key.team]
            ts = Scope("team:" + key.team, f"team '{key.team}'", t.rpm, t.tpm, t.usd_per_day, t.usd_per_month)
            if ts.limited:
                out.append(ts)
        return out

    # ---- admission ---------------------------------------------------------------------
    async def admit(self, key: Any, model: str, body: dict[str, Any], *, embeddings: bool = False) -> Lease | None:
        scopes = self.scopes(key)
        if not scopes:
            return None
        demand = self.estimate(model, body, embeddings=embeddings)
        now = time.time()
        rates: list[Rate] = []
        windows: list[Window] = []
        for s in scopes:
            if s.rpm is not None:
                rates.append(Rate(s, "rpm", s.rpm, 1))
            if s.tpm is not None:  # a request larger than the whole limit waits for a full bucket
                rates.append(Rate(s, "tpm", s.tpm, max(1, min(demand.tokens, s.tpm))))
            windows += windows_for(s, demand.cost_nanos, now)
        res_id = uuid.uuid4().hex
        try:
            verdict = await self.backend.admit(rates, windows, res_id, self.cfg.reservation_ttl_s)
        except RedisUnavailable as exc:
            return self._degraded(exc)
        if verdict[0] == 1:
            self.metrics.decision("allowed")
            return Lease(self, rates, windows, res_id, demand)
        if verdict[0] == 0:
            self.metrics.decision("rate_limited")
            raise self._rate_error(rates[verdict[1]], verdict[2] / 1000.0)
        self.metrics.decision("budget_exceeded")
        raise self._budget_error(windows[verdict[1]], verdict[2], verdict[3], now)

    def _degraded(self, exc: BaseException) -> Lease | None:
        if self.policy == "fail_open":
            self.metrics.decision("degraded_open")
            return None
        self.metrics.decision("degraded_closed")
        wait = max(1, math.ceil(self.link.cfg.retry_interval_s if self.link is not None else 1))
        raise LimitsUnavailable(
            "Rate limits and budgets cannot be checked right now (Redis is unreachable) and this gateway is "
            "configured to refuse limited requests then (redis.on_error: fail_closed). Try again shortly.",
            code="limits_unavailable", headers={"retry-after": str(wait)})

    @staticmethod
    def _rate_error(rate: Rate, wait_s: float) -> RateLimited:
        retry = max(1, math.ceil(wait_s))
        unit = "requests" if rate.name == "rpm" else "tokens"
        extra = "" if rate.name == "rpm" else (f" (this request is estimated at {rate.cost} tokens, "
                                               "prompt plus max_tokens)")
        return RateLimited(
            f"Rate limit exceeded for {rate.scope.label}: {rate.limit} {unit} per minute{extra}. "
            f"Retry after {retry}s.",
            code="rate_limit_exceeded",
            headers={"retry-after": str(retry), f"x-ratelimit-limit-{unit}": str(rate.limit),
                     f"x-ratelimit-remaining-{unit}": "0", f"x-ratelimit-reset-{unit}": f"{wait_s:.3f}s"},
            details={"limit": rate.name, "scope": rate.scope.id, "value": rate.limit, "retry_after_s": round(wait_s, 3)},
        )

    @staticmethod
    def _budget_error(w: Window, spent: int, reserved: int, now: float) -> BudgetExceeded:
        limit, spent_usd, res_usd = w.limit / NANO, spent / NANO, reserved / NANO
        resets = f"resets at {iso(w.reset_at)} (in {human_wait(w.reset_at - now)})"
        if spent >= w.limit or spent + w.amount > w.limit:
            retry = max(1, math.ceil(w.reset_at - now))
            msg = (f"Budget exceeded for {w.scope.label}: {w.name} is ${limit:.4f} and ${spent_usd:.4f} is spent "
                   f"(this request is estimated at ${w.amount / NANO:.6f}); the budget {resets}.")
            code = "budget_exceeded"
        else:  # what is left is held by requests in flight, which may settle for less
            retry = 1
            msg = (f"Budget exceeded for {w.scope.label}: {w.name} is ${limit:.4f}, ${spent_usd:.4f} is spent and "
                   f"${res_usd:.4f} is reserved by requests in flight (this request is estimated at "
                   f"${w.amount / NANO:.6f}); retry in a moment, or wait until the budget {resets}.")
            code = "budget_exceeded"
        return BudgetExceeded(msg, code=code, headers={"retry-after": str(retry)}, details={
            "budget": w.name, "scope": w.scope.id, "limit_usd": limit, "spent_usd": spent_usd,
            "reserved_usd": res_usd, "estimate_usd": w.amount / NANO, "resets_at": iso(w.reset_at),
            "resets_in_s": max(0, math.ceil(w.reset_at - now)),
        })

    # ---- settling ----------------------------------------------------------------------
    def settle_later(self, lease: Lease, tokens: int | None, cost: float | None) -> None:
        rates = []
        for r in lease.rates:
            if r.name == "tpm" and tokens is not None:
                delta = min(tokens, r.limit * 10) - r.cost
                if delta:
                    rates.append((r, delta))
        actual = 0 if cost is None else max(0, round(cost * NANO))
        windows = [(w, actual) for w in lease.windows]
        if not rates and not windows:
            return
        task = asyncio.get_running_loop().create_task(self._settle(rates, windows, lease.res_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, rates: list[tuple[Rate, int]], windows: list[tuple[Window, int]], res_id: str) -> None:
        try:
            await self.backend.settle(rates, windows, res_id)
        except RedisUnavailable:
            self._settle_errors += 1  # the reservation expires by itself (limits.reservation_ttl_s)
        except Exception:  # pragma: no cover - a bug, not an outage
            self._settle_errors += 1
            log.exception("settling a budget reservation failed")

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for pending settlements (graceful shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def usage(self, scope: Scope) -> dict[str, Any]:
        now = time.time()
        windows = windows_for(scope, 0, now)
        if not windows:
            return {}
        try:
            rows = await self.backend.usage(windows)
        except RedisUnavailable:
            return {"error": "redis unreachable"}
        return {w.name: {"limit_usd": w.limit / NANO, "spent_usd": s / NANO, "reserved_usd": r / NANO,
                         "period": w.period, "resets_at": iso(w.reset_at)}
                for w, (s, r) in zip(windows, rows)}
