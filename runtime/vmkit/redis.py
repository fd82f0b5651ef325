"""Redis for the kit and the apps: one bounded connection pool per process, and the 503 path.

An app that uses Redis takes the process's pool from `client()` and wraps each round trip in
`redis_call`, which turns an outage into `RedisUnavailable`; `install_unavailable_handler(app)`
answers that with 503.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable
from functools import lru_cache
from typing import TypeVar

import redis.asyncio as redis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse

from vmkit.settings import Settings, get_settings

log = logging.getLogger("vmkit.redis")

T = TypeVar("T")

# A pooled connection idle for longer than this is PINGed before reuse, so a Redis restart or a
# dropped TCP session surfaces as one cheap reconnect instead of an error on a real command.
HEALTH_CHECK_INTERVAL = 15
# One quick retry rides over a Redis restart or failover blip; more would only lengthen the time
# a request waits before it can answer 503.
RETRIES = 1
# An outage makes every request fail: one warning with the cause per interval is enough.
WARNING_INTERVAL = 10.0


class RedisUnavailable(Exception):
    """Redis is down, too slow, or not configured. Carries no connection details, which may hold
    credentials."""


def create_redis(settings: Settings) -> redis.Redis:
    """A client owning a bounded pool; every wait in it (connect, read, pool checkout) is bounded.

    The pool is lazy: nothing connects until the first command, so creating it never fails
    because Redis is down.
    """
    if not settings.redis_url:
        raise RedisUnavailable("REDIS_URL is not set")
    timeout = settings.redis_socket_timeout
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
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
    """The pool of this process (an API worker imports the app after the fork: one per worker)."""
    return create_redis(get_settings())


async def close_client() -> None:
    if client.cache_info().currsize:
        await client().aclose()
        client.cache_clear()


async def redis_call(awaitable: Awaitable[T], settings: Settings | None = None) -> T:
    """Bounds a Redis round trip as a whole (pool wait + retry included) and maps failure to
    RedisUnavailable. The socket timeouts bound each attempt; this bounds the sum."""
    budget = 2 * (settings or get_settings()).redis_socket_timeout
    try:
        async with asyncio.timeout(budget):
            return await awaitable
    except TimeoutError as error:
        raise RedisUnavailable("timeout") from error
    except RedisError as error:
        raise RedisUnavailable(type(error).__name__) from error


_last_warning = -WARNING_INTERVAL


async def _answer_503(request: Request, error: Exception) -> JSONResponse:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= WARNING_INTERVAL:
        _last_warning = now
        log.warning("redis unavailable", extra={"error": str(error.__cause__ or error)})
    return JSONResponse({"detail": "redis unavailable"}, status_code=503)


def install_unavailable_handler(app) -> None:
    """Requests that meet a Redis outage get 503 (never 500, never a hung worker)."""
    app.add_exception_handler(RedisUnavailable, _answer_503)
