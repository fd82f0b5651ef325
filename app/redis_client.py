"""The one Redis connection pool of a process (API worker or scheduler daemon)."""

import redis.asyncio as redis
from redis.asyncio.connection import BlockingConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.asyncio.retry import Retry

from app.settings import Settings

# A pooled connection idle for longer than this is PINGed before reuse, so a Redis restart or a
# dropped TCP session surfaces as one cheap reconnect instead of an error on a real command.
HEALTH_CHECK_INTERVAL = 15
# One quick retry rides over a Redis restart or failover blip; more would only lengthen the time
# a request waits before it can answer 503.
RETRIES = 1


def create_redis(settings: Settings) -> redis.Redis:
    """A client owning a bounded pool; every wait in it (connect, read, pool checkout) is bounded.

    The pool is lazy: nothing connects until the first command, so creating it never fails
    because Redis is down.
    """
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
