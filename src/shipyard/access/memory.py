"""Rate limits and budgets in this process: the same algorithms as the Redis scripts in
``shipyard/shared/limiter.py`` (GCRA; reserve-then-settle in nano-dollars), for one replica.

Every method runs without awaiting anything, so on the event loop each call is atomic.
State is swept as it ages: rate entries once their bucket is full again, budget windows
once their period has ended.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

WINDOW_MS = 60_000.0
SWEEP_EVERY = 4096


class _Budget:
    __slots__ = ("spent", "reserved", "res", "expire_at")

    def __init__(self, expire_at: float) -> None:
        self.spent = 0
        self.reserved = 0
        self.res: dict[str, tuple[int, float]] = {}  # id -> (amount, expiry ms)
        self.expire_at = expire_at

    def release_expired(self, now: float) -> None:
        if not self.res:
            return
        for rid, (amt, exp) in list(self.res.items()):
            if exp <= now:
                self.reserved -= amt
                del self.res[rid]


class MemoryLimiter:
    name = "memory"

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self._tat: dict[str, tuple[float, float]] = {}  # key -> (TAT ms, expires ms)
        self._budgets: dict[str, _Budget] = {}
        self._ops = 0

    def _now(self) -> float:
        return self.clock() * 1000.0

    @staticmethod
    def _rate_key(r: Any) -> str:
        return f"{r.scope.id}|{r.name}"

    @staticmethod
    def _budget_key(b: Any) -> str:
        return f"{b.scope.id}|{b.name}|{b.period}"

    def _sweep(self, now: float) -> None:
        self._ops += 1
        if self._ops % SWEEP_EVERY:
            return
        self._tat = {k: v for k, v in self._tat.items() if v[1] > now}
        self._budgets = {k: v for k, v in self._budgets.items() if v.expire_at * 1000.0 > now}

    def _tat_of(self, key: str, now: float) -> float:
        got = self._tat.get(key)
        if got is None or got[1] <= now:
            return now
        return max(got[0], now)

    async def admit(self, rates: Sequence[Any], budgets: Sequence[Any], res_id: str,
                    ttl_s: float) -> tuple[Any, ...]:
        now = self._now()
        self._sweep(now)
        new_tats = []
        deny_i, deny_wait = -1, -1.0
        for i, r in enumerate(rates):
            new = self._tat_of(self._rate_key(r), now) + r.cost * (WINDOW_MS / r.limit)
            over = new - now - WINDOW_MS
            if over > 0.5 and over > deny_wait:
                deny_i, deny_wait = i, over
            new_tats.append(new)
        if deny_i >= 0:
            return (0, deny_i, int(-(-deny_wait // 1)))
        states = []
        for j, b in enumerate(budgets):
            key = self._budget_key(b)
            st = self._budgets.get(key)
            if st is None:
                st = self._budgets[key] = _Budget(b.expire_at)
            st.release_expired(now)
            if st.spent >= b.limit or st.spent + st.reserved + b.amount > b.limit:
                return (2, j, st.spent, st.reserved)
            states.append(st)
        for r, new in zip(rates, new_tats):
            self._tat[self._rate_key(r)] = (new, new)
        for b, st in zip(budgets, states):
            if b.amount > 0:
                st.reserved += b.amount
                st.res[res_id] = (b.amount, now + ttl_s * 1000.0)
        return (1,)

    async def settle(self, rates: Sequence[tuple[Any, int]], budgets: Sequence[tuple[Any, int]],
                     res_id: str) -> None:
        now = self._now()
        for r, delta in rates:
            if not delta:
                continue
            key = self._rate_key(r)
            new = self._tat_of(key, now) + delta * (WINDOW_MS / r.limit)
            if new <= now:
                self._tat.pop(key, None)
            else:
                self._tat[key] = (new, new)
        for b, actual in budgets:
            key = self._budget_key(b)
            st = self._budgets.get(key)
            if st is None:
                st = self._budgets[key] = _Budget(b.expire_at)
            got = st.res.pop(res_id, None)
            if got is not None:
                st.reserved -= got[0]
            if actual > 0:
                st.spent += actual

    async def usage(self, budgets: Sequence[Any]) -> list[tuple[int, int]]:
        out = []
        for b in budgets:
            st = self._budgets.get(self._budget_key(b))
            out.append((st.spent, st.reserved) if st is not None else (0, 0))
        return out
