"""PostgreSQL for the apps: a bounded asyncpg pool per process, and the 503 path.

In the app, one line: `vmkit.database.install(app)` opens the pool when the app starts, closes it
when it stops, and answers `DatabaseUnavailable` with 503. In a route:

    async with vmkit.database.connection() as conn:
        await conn.fetchval("SELECT count(*) FROM notes")

When the database cannot be reached (down at start, refusing connections, gone mid-query, too
slow), `connection()` raises `DatabaseUnavailable`: the request gets 503 with Retry-After, never a
500, and every wait is bounded by DATABASE_TIMEOUT. It recovers by itself: a pool that could not
be opened at start is opened by the first request that finds the database back, and asyncpg
replaces the pool's broken connections when they are next taken. Without DATABASE_URL every
`connection()` raises `DatabaseNotConfigured`, also a 503.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import APIRouter, FastAPI

from vmkit.settings import Settings, get_settings
from vmkit.unavailable import Unavailable, answer

log = logging.getLogger("vmkit.database")

# Errors of PostgreSQL itself that mean "not now" rather than "wrong request": the connection
# failed (class 08), the server is shutting down or starting (57), it is out of connections,
# memory or disk (53).
OUTAGE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)


class DatabaseUnavailable(Unavailable):
    """The database is down, too slow, or refuses connections: the request's transaction did not
    commit (or the connection was lost while it did)."""

    detail = "database unavailable"
    # About what a restart of PostgreSQL takes.
    retry_after = 2
    log = log


class DatabaseNotConfigured(DatabaseUnavailable):
    """DATABASE_URL is empty: this deployment has no database."""

    detail = "no database: DATABASE_URL is not set"
    retry_after = None


_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def _create_pool(settings: Settings) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        settings.database_url,
        # One connection at start proves the database is there; the others open when needed.
        min_size=1,
        max_size=settings.database_pool_size,
        timeout=settings.database_timeout,
        command_timeout=settings.database_timeout,
    )


async def pool() -> asyncpg.Pool:
    """This process's pool, opened now if it is not open yet (the database was down at start)."""
    global _pool
    settings = get_settings()
    if not settings.database_url:
        raise DatabaseNotConfigured("DATABASE_URL is not set")
    if _pool is not None:
        return _pool
    try:
        # Requests that find no pool queue here behind one attempt; the timeout bounds the wait
        # of each, not only the attempt.
        async with asyncio.timeout(settings.database_timeout):
            async with _pool_lock:
                if _pool is None:
                    _pool = await _create_pool(settings)
    except Exception as error:
        raise DatabaseUnavailable(type(error).__name__) from error
    return _pool


@asynccontextmanager
async def connection() -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection for the block; DatabaseUnavailable when the database cannot serve it."""
    settings = get_settings()
    opened = await pool()
    try:
        conn = await opened.acquire(timeout=settings.database_timeout)
    except Exception as error:  # acquiring only connects and waits: any failure is an outage
        raise DatabaseUnavailable(type(error).__name__) from error
    try:
        yield conn
    except Exception as error:
        if isinstance(error, OUTAGE_ERRORS) or conn.is_closed():
            raise DatabaseUnavailable(type(error).__name__) from error
        raise
    finally:
        await _release(opened, conn)


async def _release(opened: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    # After the database restarted, resetting a broken connection for reuse fails; asyncpg has
    # then dropped it from the pool. The request's answer is already decided: a failure here must
    # never turn it into a 500.
    try:
        await opened.release(conn)
    except Exception as error:
        log.info("dropped a broken database connection", extra={"error": type(error).__name__})


async def close_pool() -> None:
    global _pool
    if _pool is not None:
        closing, _pool = _pool, None
        try:
            async with asyncio.timeout(get_settings().database_timeout):
                await closing.close()
        except Exception:  # a dead database: nothing left to close cleanly
            closing.terminate()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    if get_settings().database_url:
        try:
            await pool()
        except DatabaseUnavailable as error:
            # A worker must start (and answer liveness) while the database is down.
            log.warning("database unreachable at start-up; requests that need it answer 503 "
                        "until it is back", extra={"error": str(error)})
    try:
        yield
    finally:
        await close_pool()


_router = APIRouter(lifespan=_lifespan)


def install(app: FastAPI) -> None:
    """The database for `app`: the pool opens with the app and closes with it, and requests
    that meet an outage get 503 (never 500, never a hung worker)."""
    app.include_router(_router)
    app.add_exception_handler(DatabaseUnavailable, answer)
