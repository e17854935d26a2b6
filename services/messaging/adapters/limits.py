"""Rate limits in Redis: token buckets, fixed windows and destination-prefix velocity, decided atomically.

One Lua script (one round trip) decides a whole group of concurrent send requests, in order. For each
request it
1. counts, per destination-prefix velocity counter, how many of its messages still fit in the current
   window (the rest will be THROTTLED, per message);
2. checks every bucket the request draws from (account, API key, the key's per-minute and per-day windows)
   for the messages that remain: if any bucket is short, the whole request is refused with the wait until
   it would fit (-1: it never can) and NOTHING is consumed;
3. otherwise consumes from every bucket and counter at once.
Time comes from Redis (`TIME`), so API replicas with skewed clocks agree. Key names hold account ids, API
key ids and keyed tokens of prefixes, never a phone number.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from services.messaging.domain.limits import LimitRequest, LimitVerdict

_LOG = logging.getLogger(__name__)

# ARGV[1]: one string of space-separated numbers (one argument to encode and send, not hundreds; Lua
# splits it): for each request, in order,
#   nb, then nb x (key index, capacity, rate/s, window s), nv, then nv x (key index, limit, window s, count),
#   and the number of exempt messages.
# Returns per request: {wait_ms (0 ok, -1 never), exceeded bucket number (1-based, 0 none), allowed per "v"...}
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local a = {}
for x in string.gmatch(ARGV[1], '%S+') do a[#a + 1] = x end
local i = 1
local out = {}
while i <= #a do
  local b, v = {}, {}
  local nb = tonumber(a[i]); i = i + 1
  for k = 1, nb do
    b[k] = {tonumber(a[i]), tonumber(a[i + 1]), tonumber(a[i + 2]), tonumber(a[i + 3])}; i = i + 4
  end
  local nv = tonumber(a[i]); i = i + 1
  for k = 1, nv do
    v[k] = {tonumber(a[i]), tonumber(a[i + 1]), tonumber(a[i + 2]), tonumber(a[i + 3])}; i = i + 4
  end
  local cost = tonumber(a[i]); i = i + 1
  local allowed = {}
  for vi = 1, nv do
    local used = tonumber(redis.call('GET', KEYS[v[vi][1]] .. ':' .. math.floor(now / v[vi][3])) or '0')
    allowed[vi] = math.max(0, math.min(v[vi][4], v[vi][2] - used))
    cost = cost + allowed[vi]
  end
  local wait, which = 0, 0
  local fresh = {}
  for bi = 1, nb do
    local key, cap, rate, window = KEYS[b[bi][1]], b[bi][2], b[bi][3], b[bi][4]
    local w = 0
    if window > 0 then
      local used = tonumber(redis.call('GET', key .. ':' .. math.floor(now / window)) or '0')
      if cost > cap then w = -1
      elseif used + cost > cap then w = (math.floor(now / window) + 1) * window - now end
    else
      local h = redis.call('HMGET', key, 't', 'ts')
      local tokens = tonumber(h[1]) or cap
      local ts = tonumber(h[2]) or now
      tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
      fresh[bi] = tokens
      if cost > cap or (rate <= 0 and tokens < cost) then w = -1
      elseif tokens < cost then w = (cost - tokens) / rate end
    end
    if w ~= 0 and wait ~= -1 then
      if w == -1 or w > wait then wait, which = w, bi end
    end
  end
  if wait ~= 0 then
    out[#out + 1] = {wait == -1 and -1 or math.max(1, math.ceil(wait * 1000)), which}
  else
    if cost > 0 then
      for bi = 1, nb do
        local key, cap, rate, window = KEYS[b[bi][1]], b[bi][2], b[bi][3], b[bi][4]
        if window > 0 then
          local wkey = key .. ':' .. math.floor(now / window)
          redis.call('INCRBY', wkey, cost)
          redis.call('EXPIRE', wkey, window * 2)
        else
          redis.call('HSET', key, 't', tostring(fresh[bi] - cost), 'ts', tostring(now))
          redis.call('EXPIRE', key, math.ceil(cap / math.max(rate, 0.001)) + 60)
        end
      end
      for vi = 1, nv do
        if allowed[vi] > 0 then
          local wkey = KEYS[v[vi][1]] .. ':' .. math.floor(now / v[vi][3])
          redis.call('INCRBY', wkey, allowed[vi])
          redis.call('EXPIRE', wkey, v[vi][3] * 2)
        end
      end
    end
    local r = {0, 0}
    for vi = 1, nv do r[#r + 1] = allowed[vi] end
    out[#out + 1] = r
  end
end
return out
"""


class RedisLimiter:
    """`check(requests)` -> one verdict per request. When Redis cannot answer in time the limiter fails
    OPEN (every request passes, a warning is logged): sends keep working through a Redis outage, and the
    account's credit still bounds what can be spent."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, timeout: float = 1.0) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._sha = hashlib.sha1(_SCRIPT.encode(), usedforsecurity=False).hexdigest()

    async def _eval(self, keys: list[str], args: list[int | float]) -> Any:
        """EVALSHA, loading the script once when Redis does not know it (first call, or after a restart)."""
        packed = " ".join(map(str, args))
        try:
            return await self._redis.evalsha(self._sha, len(keys), *keys, packed)
        except NoScriptError:
            await self._redis.script_load(_SCRIPT)
            return await self._redis.evalsha(self._sha, len(keys), *keys, packed)

    async def check(self, requests: Sequence[LimitRequest]) -> list[LimitVerdict]:
        keys: list[str] = []
        index: dict[str, int] = {}

        def ref(key: str) -> int:
            if key not in index:
                keys.append(self._prefix + key)
                index[key] = len(keys)
            return index[key]

        args: list[int | float] = []
        velocity_keys: list[list[str]] = []
        for req in requests:
            counts: dict[str, tuple[int, int, int]] = {}
            exempt = 0
            for v in req.velocity:
                if v is None or v.limit <= 0:
                    exempt += 1
                    continue
                n = counts.get(v.key, (v.limit, v.window, 0))[2]
                counts[v.key] = (v.limit, v.window, n + 1)
            velocity_keys.append(list(counts))
            args.append(len(req.buckets))
            for b in req.buckets:
                args.extend((ref(b.key), b.capacity, b.rate, b.window))
            args.append(len(counts))
            for k, (lim, win, n) in counts.items():
                args.extend((ref(k), lim, win, n))
            args.append(exempt)
        if not keys:
            return [_all_pass(r) for r in requests]
        try:
            async with asyncio.timeout(self._timeout):
                raw: Any = await self._eval(keys, args)
        except (TimeoutError, OSError, aioredis.RedisError) as exc:
            _LOG.warning("rate limiter unavailable (%s); letting %d requests through", type(exc).__name__,
                         len(requests))
            return [_all_pass(r) for r in requests]
        return [_verdict(req, vkeys, row) for req, vkeys, row in zip(requests, velocity_keys, raw, strict=True)]


def _all_pass(req: LimitRequest) -> LimitVerdict:
    return LimitVerdict(throttled=tuple(False for _ in req.velocity))


def _verdict(req: LimitRequest, vkeys: list[str], row: list[int]) -> LimitVerdict:
    wait_ms, which = int(row[0]), int(row[1])
    if wait_ms != 0:
        name = req.buckets[which - 1].key.split(":", 1)[0] if which else ""
        return LimitVerdict(retry_after=-1.0 if wait_ms < 0 else wait_ms / 1000, exceeded=name,
                            throttled=tuple(False for _ in req.velocity))
    allowed = {k: int(a) for k, a in zip(vkeys, row[2:], strict=True)}
    throttled: list[bool] = []
    for v in req.velocity:
        if v is None or v.limit <= 0:
            throttled.append(False)
            continue
        left = allowed.get(v.key, 0)
        throttled.append(left <= 0)
        allowed[v.key] = left - 1
    return LimitVerdict(throttled=tuple(throttled))
