"""Liveness and readiness, for any FastAPI app in one line: `app.include_router(vmkit.probes.router)`.

- HEALTH_PATH (/health): 200 while the process serves, whatever Redis does; names the version,
  the worker id, the pid and the loop and parser in use.
- READY_PATH (/ready): 200 when every dependency the deployment has answers: Redis when REDIS_URL
  is set (and the cache Redis when REDIS_CACHE_URL is), PostgreSQL (`SELECT 1`) when DATABASE_URL
  is set, a fresh scheduler heartbeat when SCHEDULER_JOBS is set; 503 naming what failed.
  When both settings name one path, that path answers readiness.

The deploy gate and nginx use the same two paths (from the same settings).
The router's lifespan reports the runtime at start and closes the process's Redis pool at exit;
FastAPI merges it into the app's own lifespan.
"""

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from redis.asyncio import Redis

from vmkit import database, loop_and_parser
from vmkit.redis import RedisUnavailable, cache_client, client, close_client, redis_call
from vmkit.scheduler import state as schedule_state
from vmkit.settings import Settings, get_settings

log = logging.getLogger("vmkit.probes")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict]:
    settings = get_settings()
    current = loop_and_parser.detect()
    loop_and_parser.report(current, production=settings.api_env == "production")
    health_body = orjson.dumps(
        {
            "status": "ok",
            "version": settings.app_version,
            "worker_id": current.worker_id,
            "pid": current.pid,
            "runtime": {"loop": current.loop, "http": current.http},
        }
    )
    if settings.redis_url and not (redis := await _redis_check(client(), settings))["ok"]:
        # Informational only: a worker must start (and answer liveness) while Redis is down.
        log.warning("redis unreachable at start-up; readiness answers 503 until it is back",
                    extra={"error": redis["error"]})
    log.info("started", extra={"version": settings.app_version, "env": settings.api_env})
    try:
        yield {"vmkit_health_body": health_body}
    finally:
        await close_client()
        log.info("stopped")


router = APIRouter(lifespan=lifespan, tags=["probes"])


async def health(request: Request) -> Response:
    # Constant for the life of the worker, so encoded once at start-up.
    return Response(request.state.vmkit_health_body, media_type="application/json")


async def ready() -> Response:
    settings = get_settings()
    checks: dict[str, dict] = {}
    if settings.redis_url:
        checks["redis"] = await _redis_check(client(), settings)
    if settings.redis_cache_url:
        checks["redis_cache"] = await _redis_check(cache_client(), settings)
    if settings.database_url:
        checks["database"] = await _database_check()
    if settings.scheduler_jobs:
        # Without REDIS_URL the scheduler has no Redis either: not ready, rather than a 500.
        redis_ok = checks.get("redis", {}).get("ok", False)
        checks["scheduler"] = await _scheduler_check(settings, redis_ok=redis_ok)
    is_ready = all(check["ok"] for check in checks.values())
    body = {"status": "ready" if is_ready else "not_ready", "checks": checks}
    return Response(orjson.dumps(body), status_code=200 if is_ready else 503,
                    media_type="application/json")


async def _redis_check(redis: Redis, settings: Settings) -> dict:
    started = time.perf_counter()
    try:
        await redis_call(redis.ping(), settings)
    except RedisUnavailable as error:
        return {"ok": False, "error": f"redis unavailable ({error})"}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


async def _database_check() -> dict:
    started = time.perf_counter()
    try:
        async with database.connection() as conn:
            await conn.fetchval("SELECT 1")
    except database.DatabaseUnavailable as error:
        return {"ok": False, "error": f"database unavailable ({error})"}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


async def _scheduler_check(settings: Settings, redis_ok: bool) -> dict:
    check: dict = {
        "ok": False,
        "leader": None,
        "fence": None,
        "heartbeat_age_seconds": None,
        "max_age_seconds": settings.ready_heartbeat_max_age,
    }
    if not redis_ok:
        check["error"] = "redis unavailable"
        return check
    try:
        heartbeat = await redis_call(schedule_state.read_heartbeat(client(), settings), settings)
        leader = await redis_call(schedule_state.read_leader(client(), settings), settings)
    except RedisUnavailable as error:
        check["error"] = f"redis unavailable ({error})"
        return check
    if leader is not None:
        check["leader"], check["fence"] = leader["id"], leader["fence"]
    if heartbeat is None:
        check["error"] = "no scheduler heartbeat"
        return check
    # Wall clocks of two hosts: a heartbeat "from the future" is simply fresh.
    age = max(0.0, time.time() - heartbeat["at"])
    check["heartbeat_age_seconds"] = round(age, 3)
    check["ok"] = age <= settings.ready_heartbeat_max_age
    if not check["ok"]:
        check["error"] = "scheduler heartbeat is stale"
    return check


NOT_READY = {503: {"description": "a dependency of the deployment is down; the body names which"}}
# One path for both (an app with a single probe route) answers readiness: ready implies alive.
PROBES = {get_settings().health_path: (health, {}), get_settings().ready_path: (ready, NOT_READY)}
for path, (endpoint, responses) in PROBES.items():
    router.add_api_route(path, endpoint, methods=["GET"], responses=responses)
    # Monitors probe with HEAD too (uvicorn then sends the headers only).
    router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
