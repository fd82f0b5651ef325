"""vmkit.redis.create_redis against a real redis-server, a dead port and a silent peer."""

import asyncio
import socket
import time

import pytest
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vmkit.redis import create_redis
from vmkit.settings import Settings
from support import free_port


def _settings(url: str, **overrides) -> Settings:
    return Settings(redis_url=url, redis_socket_timeout=0.5, **overrides)


def test_hiredis_parser_decoded_strings_and_a_bounded_pool(redis_server):
    async def scenario():
        redis = create_redis(_settings(redis_server.url, redis_max_connections=3))
        try:
            await redis.set("k", "välue")
            assert await redis.get("k") == "välue"
            pool = redis.connection_pool
            assert isinstance(pool, BlockingConnectionPool)
            assert pool.max_connections == 3
            connection = await pool.get_connection()
            try:
                assert type(connection._parser).__name__ == "_AsyncHiredisParser"
            finally:
                await pool.release(connection)
            # More concurrent commands than connections: they queue for the pool, none fails.
            assert await asyncio.gather(*(redis.incr("n") for _ in range(20)))
            assert await redis.get("n") == "20"
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_nothing_connects_until_used_and_a_dead_port_fails_fast():
    async def scenario():
        redis = create_redis(_settings(f"redis://127.0.0.1:{free_port()}/0"))  # must not raise
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await redis.ping()
        assert time.monotonic() - started < 5
        await redis.aclose()

    asyncio.run(scenario())


def test_a_peer_that_never_answers_times_out():
    # Accepts connections (the kernel completes the handshake) but never replies.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)

        async def scenario():
            redis = create_redis(_settings(f"redis://127.0.0.1:{silent.getsockname()[1]}/0"))
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await redis.ping()
            # Two attempts of 0.5 s plus a short backoff: bounded, not hung.
            assert time.monotonic() - started < 5
            await redis.aclose()

        asyncio.run(scenario())


def test_reconnects_after_a_redis_restart(redis_server):
    async def scenario():
        redis = create_redis(_settings(redis_server.url))
        try:
            assert await redis.ping()
            redis_server.stop()
            with pytest.raises(RedisConnectionError):
                await redis.ping()
            redis_server.start()
            assert await redis.ping()
        finally:
            await redis.aclose()

    asyncio.run(scenario())
