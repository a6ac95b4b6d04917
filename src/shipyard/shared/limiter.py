"""Rate limits and budgets in Redis, enforced atomically across replicas by Lua scripts.

One script admits a request against every limit that applies to it (a key's and its
team's rpm, tpm and USD budgets) and either commits all of them or none: a request refused
by its budget does not use up its rate limit.

Rate limits (rpm, tpm) are GCRA (the generic cell rate algorithm): one number per limit,
the "theoretical arrival time" (TAT). A limit of L per minute has an emission interval
T = 60 s / L and a burst tolerance of 60 s, which is a token bucket holding L that refills
continuously. A request of cost c (1 for rpm, estimated tokens for tpm) is admitted when
max(TAT, now) + c*T - now <= 60 s; the wait otherwise is exactly that excess, so the
Retry-After is exact. tpm is reserved with the estimate and settled with the real token
count (the TAT moves by the difference; a refund never goes below "bucket full").

Budgets (USD per day, per month) are reserve-then-settle, in integer nano-dollars: a hash
per scope and period holds ``spent`` and ``reserved``; each in-flight request's reservation
is a field ``r:<id>`` plus an entry in a sorted set scored by its expiry, so a replica that
dies mid-request cannot hold budget forever (expired reservations are released by the next
admission). A request is admitted only if spent + reserved + its estimate <= limit, so
concurrent requests on any number of replicas cannot overspend as long as each estimate is
an upper bound of the real cost (see docs/operations.md). Settling removes the reservation
and adds the real cost. Time is Redis's own clock (``TIME``), one clock for every replica.

Both scripts are idempotent per request id, because the RedisLink retries a call once after
a connection-level error and cannot know whether the script already ran (a reply lost after
Redis executed it looks the same as a write to a dead socket). The script that admits or
settles records ``{key_prefix}:once:<id>`` (``a`` admitted, ``s`` settled) for ``ONCE_MS``;
a second run of the same admission answers "admitted" without reserving again, a second
settle does nothing. Refusals write nothing, so running one again is harmless.
"""

from __future__ import annotations

from typing import Any, Sequence

from .redis import key as rkey

WINDOW_MS = 60_000
ONCE_MS = 60_000  # how long a request id is remembered: far longer than a retry can come late

ADMIT = """
local once = KEYS[#KEYS]
if redis.call('GET', once) then return {1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nr = tonumber(ARGV[1])
local nb = tonumber(ARGV[2])
local res = ARGV[3]
local ttl = tonumber(ARGV[4])
local a = 5
local W = 60000
local tats = {}
local deny_i, deny_wait = 0, -1
for i = 1, nr do
  local limit = tonumber(ARGV[a]); local cost = tonumber(ARGV[a + 1]); a = a + 2
  local T = W / limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new = tat + cost * T
  local over = new - now - W
  if over > 0.5 then
    if over > deny_wait then deny_i = i; deny_wait = over end
  end
  tats[i] = new
end
if deny_i > 0 then return {0, deny_i, math.ceil(deny_wait)} end
local k = nr
local amts = {}
for j = 1, nb do
  local hk = KEYS[k + 1]; local zk = KEYS[k + 2]; k = k + 2
  local limit = tonumber(ARGV[a]); local amt = tonumber(ARGV[a + 1]); a = a + 3
  local old = redis.call('ZRANGEBYSCORE', zk, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(old) do
    local v = redis.call('HGET', hk, 'r:' .. id)
    if v then
      redis.call('HINCRBY', hk, 'reserved', -tonumber(v))
      redis.call('HDEL', hk, 'r:' .. id)
    end
    redis.call('ZREM', zk, id)
  end
  local spent = tonumber(redis.call('HGET', hk, 'spent') or 0)
  local reserved = tonumber(redis.call('HGET', hk, 'reserved') or 0)
  if spent >= limit or spent + reserved + amt > limit then
    return {2, j, spent, reserved}
  end
  amts[j] = amt
end
for i = 1, nr do
  redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1)
end
k = nr
a = 5 + 2 * nr
for j = 1, nb do
  local hk = KEYS[k + 1]; local zk = KEYS[k + 2]; k = k + 2
  local exp = tonumber(ARGV[a + 2]); a = a + 3
  if amts[j] > 0 then
    redis.call('HINCRBY', hk, 'reserved', amts[j])
    redis.call('HSET', hk, 'r:' .. res, amts[j])
    redis.call('ZADD', zk, now + ttl, res)
  else
    redis.call('HSETNX', hk, 'spent', 0)
  end
  redis.call('EXPIREAT', hk, exp)
  redis.call('EXPIREAT', zk, exp)
end
redis.call('SET', once, 'a', 'PX', tonumber(ARGV[#ARGV]))
return {1}
"""

SETTLE = """
local once = KEYS[#KEYS]
if redis.call('GET', once) == 's' then return 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nr = tonumber(ARGV[1])
local nb = tonumber(ARGV[2])
local res = ARGV[3]
local a = 4
local W = 60000
for i = 1, nr do
  local limit = tonumber(ARGV[a]); local delta = tonumber(ARGV[a + 1]); a = a + 2
  if delta ~= 0 then
    local T = W / limit
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    local new = tat + delta * T
    if new <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1)
    end
  end
end
local k = nr
for j = 1, nb do
  local hk = KEYS[k + 1]; local zk = KEYS[k + 2]; k = k + 2
  local actual = tonumber(ARGV[a]); local exp = tonumber(ARGV[a + 1]); a = a + 2
  local v = redis.call('HGET', hk, 'r:' .. res)
  if v then
    redis.call('HINCRBY', hk, 'reserved', -tonumber(v))
    redis.call('HDEL', hk, 'r:' .. res)
    redis.call('ZREM', zk, res)
  end
  if actual > 0 then redis.call('HINCRBY', hk, 'spent', actual) end
  redis.call('EXPIREAT', hk, exp)
  redis.call('EXPIREAT', zk, exp)
end
redis.call('SET', once, 's', 'PX', tonumber(ARGV[#ARGV]))
return 1
"""


class RedisLimiter:
    """The Redis backend of :class:`shipyard.access.limits.Limiter` (same interface as
    :class:`shipyard.access.memory.MemoryLimiter`). Calls go through a RedisLink, so an
    outage raises RedisUnavailable at once and the caller applies ``redis.on_error``."""

    name = "redis"

    def __init__(self, link: Any) -> None:
        self.link = link
        self.cfg = link.cfg
        self._admit = link.client.register_script(ADMIT)
        self._settle = link.client.register_script(SETTLE)

    def _rate_key(self, r: Any) -> str:
        return rkey(self.cfg, "rl", r.scope.id, r.name)

    def _budget_keys(self, b: Any) -> tuple[str, str]:
        h = rkey(self.cfg, "bg", b.scope.id, b.name, b.period)
        return h, h + ":res"

    def _once(self, keys: list[str], args: list[Any], res_id: str) -> None:
        """The request id's marker: the scripts' last key and argument (see the module docstring)."""
        keys.append(rkey(self.cfg, "once", res_id))
        args.append(ONCE_MS)

    async def admit(self, rates: Sequence[Any], budgets: Sequence[Any], res_id: str,
                    ttl_s: float) -> tuple[Any, ...]:
        """(1,) admitted; (0, i, wait_ms) rate i (0-based) refused; (2, j, spent, reserved)
        budget j refused."""
        keys: list[str] = [self._rate_key(r) for r in rates]
        args: list[Any] = [len(rates), len(budgets), res_id, int(ttl_s * 1000)]
        for r in rates:
            args += [r.limit, r.cost]
        for b in budgets:
            keys += self._budget_keys(b)
            args += [b.limit, b.amount, int(b.expire_at)]
        self._once(keys, args, res_id)
        out = await self.link.run("admit", lambda: self._admit(keys=keys, args=args))
        code = int(out[0])
        if code == 1:
            return (1,)
        if code == 0:
            return (0, int(out[1]) - 1, int(out[2]))
        return (2, int(out[1]) - 1, int(out[2]), int(out[3]))

    async def settle(self, rates: Sequence[tuple[Any, int]], budgets: Sequence[tuple[Any, int]],
                     res_id: str) -> None:
        """rates: (rate, token delta); budgets: (window, actual nano-dollars)."""
        keys: list[str] = [self._rate_key(r) for r, _ in rates]
        args: list[Any] = [len(rates), len(budgets), res_id]
        for r, delta in rates:
            args += [r.limit, int(delta)]
        for b, actual in budgets:
            keys += self._budget_keys(b)
            args += [int(actual), int(b.expire_at)]
        self._once(keys, args, res_id)
        await self.link.run("settle", lambda: self._settle(keys=keys, args=args))

    async def usage(self, budgets: Sequence[Any]) -> list[tuple[int, int]]:
        """(spent, reserved) nano-dollars of each window (expired reservations included
        until the next admission releases them)."""
        client = self.link.client

        async def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for b in budgets:
                pipe.hmget(self._budget_keys(b)[0], "spent", "reserved")
            return await pipe.execute()

        rows = await self.link.run("usage", read)
        return [(int(s or 0), int(r or 0)) for s, r in rows]
