"""The leader lease: at most one scheduler process across all hosts runs jobs at any time.

The lease is one Redis key holding {"id", "token", "fence"} with an expiry. It is taken only
when absent, renewed and released only by the holder of its random token (Lua, so compare and
act are one step), and every acquisition INCRs the fencing counter so each leadership term has
a number larger than all before it (also after Redis lost its data: see _fence_seen). The
holder also keeps a local deadline, measured from before each successful renewal was sent, and
treats itself as leader only until then: a leader cut off from Redis stops running jobs before
another process can take over.
"""

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from vmkit.scheduler import state as schedule_state
from vmkit.settings import Settings

log = logging.getLogger("vmkit.scheduler.lease")

# Redlock's allowance for the holder's clock running slower than Redis's.
CLOCK_DRIFT_FACTOR = 0.01

_ACQUIRE_SCRIPT = """
local current = redis.call('get', KEYS[1])
if current then
  local held = cjson.decode(current)
  if held.token ~= ARGV[2] then return {0, held.fence} end
  redis.call('pexpire', KEYS[1], ARGV[3])
  return {1, held.fence}
end
local fence = redis.call('incr', KEYS[2])
local floor = tonumber(ARGV[4])
if fence <= floor then
  fence = floor + 1
  redis.call('set', KEYS[2], fence)
end
redis.call('set', KEYS[1], cjson.encode({id = ARGV[1], token = ARGV[2], fence = fence}),
           'NX', 'PX', ARGV[3])
return {1, fence}
"""

_RENEW_SCRIPT = """
local current = redis.call('get', KEYS[1])
if current and cjson.decode(current).token == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_SCRIPT = """
local current = redis.call('get', KEYS[1])
if current and cjson.decode(current).token == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Backoff:
    """Doubling delays with jitter between `initial` and `cap`, back to `initial` on reset()."""

    def __init__(self, initial: float = 0.5, cap: float = 5.0) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        # Up to 20 % less, so processes that lost Redis together do not retry in lockstep.
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self._next = self.initial


class Lease:
    def __init__(self, redis: Redis, settings: Settings, holder_id: str) -> None:
        self.holder_id = holder_id
        # Survives a lost reply: a retried acquisition finds its own token and keeps the term.
        self.token = secrets.token_hex(16)
        self.ttl = settings.scheduler_lease_ttl
        self.fence: int | None = None
        # The highest fence this process has seen. Passed to every acquisition, so fences keep
        # growing even if Redis comes back from a restart without its data.
        self._fence_seen = 0
        self._valid_until = 0.0
        self._keys = [schedule_state.leader_key(settings), schedule_state.fence_key(settings)]
        self._acquire = redis.register_script(_ACQUIRE_SCRIPT)
        self._renew = redis.register_script(_RENEW_SCRIPT)
        self._release = redis.register_script(_RELEASE_SCRIPT)

    @property
    def renew_interval(self) -> float:
        return self.ttl / 3

    @property
    def acquire_interval(self) -> float:
        # How long a standby may take to notice a free lease, on top of the lease's expiry.
        return min(1.0, self.ttl / 4)

    def is_valid(self) -> bool:
        return self.fence is not None and time.monotonic() < self._valid_until

    def _extend(self, sent_at: float) -> None:
        self._valid_until = sent_at + self.ttl * (1 - CLOCK_DRIFT_FACTOR)

    def _ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    async def acquire(self) -> bool:
        """True when this process holds the lease afterwards (newly or still)."""
        sent_at = time.monotonic()
        acquired, fence = await self._acquire(
            keys=self._keys, args=[self.holder_id, self.token, self._ttl_ms(), self._fence_seen]
        )
        self._fence_seen = max(self._fence_seen, int(fence))
        if not acquired:
            return False
        self.fence = int(fence)
        self._extend(sent_at)
        return True

    async def renew(self) -> bool:
        sent_at = time.monotonic()
        renewed = await self._renew(keys=self._keys[:1], args=[self.token, self._ttl_ms()])
        if renewed:
            self._extend(sent_at)
        return bool(renewed)

    async def release(self) -> bool:
        """Delete the lease if it is still ours; whatever Redis says, we are no longer leader."""
        self._valid_until = 0.0
        return bool(await self._release(keys=self._keys[:1], args=[self.token]))

    async def keep(self, on_acquired: Callable[[], None]) -> None:
        """Hold or chase the lease until cancelled; never gives up while Redis is unreachable."""
        backoff = Backoff()
        redis_down = False
        while True:
            was_leader = self.fence is not None
            try:
                # A reply later than the TTL is useless: the lease could have changed hands.
                async with asyncio.timeout(self.ttl):
                    if was_leader:
                        if not await self.renew():
                            self._lose(
                                "lease renewal refused: another process holds it or it expired"
                            )
                    elif await self.acquire():
                        log.info(
                            "leadership acquired",
                            extra={
                                "event": "leader_acquired",
                                "leader": self.holder_id,
                                "fence": self.fence,
                            },
                        )
                        on_acquired()
            except (RedisError, OSError, TimeoutError) as error:
                redis_down = True
                if was_leader and not self.is_valid():
                    self._lose("redis unreachable for the whole lease validity")
                delay = backoff.next()
                if self.fence is not None:
                    # Still within the lease: keep trying to renew before it runs out.
                    delay = min(delay, self.renew_interval)
                log.warning(
                    "redis unavailable, retrying",
                    extra={
                        "event": "redis_unavailable",
                        "error": _describe(error),
                        "retry_in": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)
                continue
            if redis_down:
                redis_down = False
                log.info("redis available again", extra={"event": "redis_recovered"})
            backoff.reset()
            await asyncio.sleep(
                self.renew_interval if self.fence is not None else self.acquire_interval
            )

    def _lose(self, reason: str) -> None:
        log.warning(
            "leadership lost",
            extra={
                "event": "leader_lost",
                "leader": self.holder_id,
                "fence": self.fence,
                "reason": reason,
            },
        )
        self.fence = None
        self._valid_until = 0.0


def _describe(error: BaseException) -> str:
    # redis-py messages name host and port, never the password of REDIS_URL.
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
