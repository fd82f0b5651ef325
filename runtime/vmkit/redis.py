"""Redis for the kit and the apps: bounded connection pools per process, and the 503/507 path.

Two Redis servers, two pools:
- `client()`, the data Redis (REDIS_URL): the kit's state (scheduler lease, run records,
  idempotency records) and whatever the app must not lose. It never evicts: when it is full,
  writes fail and the request gets 507.
- `cache_client()`, the cache Redis (REDIS_CACHE_URL): what the app can rebuild; when full it
  drops the least recently used keys, so a flood of cache writes never touches the data. Without
  REDIS_CACHE_URL it is the data Redis (a laptop with one redis-server).

Wrap each round trip in `redis_call`, which turns an outage into `RedisUnavailable` and a full
data Redis into `RedisFull`; `install_unavailable_handler(app)` answers them with 503 and 507.
"""

import asyncio
import logging
from collections.abc import Awaitable
from functools import lru_cache
from typing import TypeVar

import redis.asyncio as redis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import OutOfMemoryError, RedisError

from vmkit.settings import Settings, get_settings
from vmkit.unavailable import Unavailable, answer

log = logging.getLogger("vmkit.redis")

T = TypeVar("T")

# A pooled connection idle for longer than this is PINGed before reuse, so a Redis restart or a
# dropped TCP session surfaces as one cheap reconnect instead of an error on a real command.
HEALTH_CHECK_INTERVAL = 15
# One quick retry rides over a Redis restart or failover blip; more would only lengthen the time
# a request waits before it can answer 503.
RETRIES = 1


class RedisUnavailable(Unavailable):
    """Redis is down, too slow, or not configured: nothing was done."""

    detail = "redis unavailable"
    log = log


class RedisFull(RedisUnavailable):
    """The data Redis reached its maxmemory and refuses writes (it never evicts): nothing was
    written."""

    status = 507
    detail = "storage full: the data Redis reached its memory limit; nothing was written"


def create_redis(settings: Settings, url: str | None = None) -> redis.Redis:
    """A client of the Redis at `url` (default REDIS_URL) owning a bounded pool; every wait in it
    (connect, read, pool checkout) is bounded.

    The pool is lazy: nothing connects until the first command, so creating it never fails
    because Redis is down.
    """
    url = settings.redis_url if url is None else url
    if not url:
        raise RedisUnavailable("REDIS_URL is not set")
    timeout = settings.redis_socket_timeout
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        # Waiting for a free pooled connection counts against the same budget as a socket read.
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.25, base=0.05), RETRIES),
        decode_responses=True,
    )
    # hiredis is redis-py's default parser whenever the hiredis package is importable (it is a
    # locked dependency); tests/integration/test_api_redis.py checks a live connection uses it.
    return redis.Redis.from_pool(pool)


@lru_cache(maxsize=1)
def client() -> redis.Redis:
    """The data Redis pool of this process (an API worker imports the app after the fork: one
    per worker)."""
    return create_redis(get_settings())


@lru_cache(maxsize=1)
def cache_client() -> redis.Redis:
    """The cache Redis pool of this process; the data Redis's when REDIS_CACHE_URL is not set."""
    settings = get_settings()
    return create_redis(settings, settings.redis_cache_url) if settings.redis_cache_url else client()


async def close_client() -> None:
    """Closes this process's pools (both, when they differ)."""
    for cached in (cache_client, client):
        if cached.cache_info().currsize:
            await cached().aclose()
            cached.cache_clear()


async def redis_call(awaitable: Awaitable[T], settings: Settings | None = None) -> T:
    """Bounds a Redis round trip as a whole (pool wait + retry included) and maps failure to
    RedisUnavailable. The socket timeouts bound each attempt; this bounds the sum."""
    budget = 2 * (settings or get_settings()).redis_socket_timeout
    try:
        async with asyncio.timeout(budget):
            return await awaitable
    except TimeoutError as error:
        raise RedisUnavailable("timeout") from error
    except OutOfMemoryError as error:
        raise RedisFull("maxmemory") from error
    except RedisError as error:
        raise RedisUnavailable(type(error).__name__) from error


def install_unavailable_handler(app) -> None:
    """Requests that meet a Redis outage get 503, and writes to a full data Redis 507 (never 500,
    never a hung worker)."""
    app.add_exception_handler(RedisUnavailable, answer)
