"""The ASGI application, `app.main:app`, served by gunicorn with uvicorn workers (gunicorn.conf.py)."""

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import Receive, Scope, Send

from app import api, runtime
from app.middleware import AccessLog
from app.redis_client import create_redis
from app.settings import Settings, get_settings

log = logging.getLogger("app")

REDIS_WARNING_INTERVAL = 10.0


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict]:
    settings: Settings = app.state.settings
    current = runtime.detect(getattr(app.state, "http_impl", runtime.UNKNOWN))
    runtime.report(current, production=settings.api_env == "production")

    redis = create_redis(settings)
    await _log_redis_reachability(redis, settings)
    health_body = orjson.dumps(
        {
            "status": "ok",
            "version": settings.app_version,
            "worker_id": current.worker_id,
            "pid": current.pid,
            "runtime": {"loop": current.loop, "http": current.http},
        }
    )
    log.info("started", extra={"version": settings.app_version, "env": settings.api_env})
    try:
        yield {"settings": settings, "redis": redis, "health_body": health_body}
    finally:
        await redis.aclose()
        log.info("stopped")


async def _log_redis_reachability(redis: Redis, settings: Settings) -> None:
    """Informational only: a worker must start (and /health answer) while Redis is down."""
    try:
        await api.redis_call(settings, redis.ping())
    except api.RedisUnavailable as error:
        log.warning("redis unreachable at start-up; /cache and /ready answer 503 until it is back",
                    extra={"error": str(error)})


async def _redis_unavailable(request: Request, error: Exception) -> JSONResponse:
    # Every failing request already has its 503 access line: one warning with the cause per
    # interval is enough, and keeps an outage from flooding journald.
    state = request.app.state
    now = time.monotonic()
    if now - getattr(state, "redis_warned_at", -REDIS_WARNING_INTERVAL) >= REDIS_WARNING_INTERVAL:
        state.redis_warned_at = now
        log.warning("redis unavailable", extra={"error": str(error.__cause__ or error)})
    return JSONResponse({"detail": "redis unavailable"}, status_code=503)


class Api(FastAPI):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # FastAPI replaces the lifespan `receive` with a closure of its own (telemetry) before any
        # middleware sees it: read the server's HTTP parser from the original one here.
        if scope["type"] == "lifespan":
            self.state.http_impl = runtime.http_name_from_lifespan(receive)
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    development = settings.api_env == "development"
    app = Api(
        title="api",
        version=settings.app_version,
        lifespan=lifespan,
        max_body_size=settings.api_max_body_bytes,
        # The interactive docs are a development aid, not part of the production surface.
        docs_url="/docs" if development else None,
        redoc_url=None,
        openapi_url="/openapi.json" if development else None,
    )
    app.state.settings = settings
    app.include_router(api.router)
    app.add_exception_handler(api.RedisUnavailable, _redis_unavailable)

    # add_middleware wraps: the last one added sees the request first.
    app.add_middleware(
        GZipMiddleware, minimum_size=settings.gzip_min_size, compresslevel=settings.gzip_level
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "PUT", "DELETE"],
            allow_headers=["Content-Type"],
        )
    app.add_middleware(AccessLog)
    return app


app = create_app(get_settings())
