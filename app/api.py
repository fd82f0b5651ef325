"""The HTTP routes. Per-process resources come from the lifespan state (app.main)."""

import asyncio
import time
from collections.abc import Awaitable
from functools import lru_cache
from typing import Annotated, TypeVar

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import schedule_state
from app.settings import Settings

router = APIRouter()

T = TypeVar("T")

KEY_PATTERN = r"^[A-Za-z0-9_.:-]+$"
KEY_MAX_LENGTH = 128
VALUE_MAX_LENGTH = 64 * 1024
# Control characters other than tab, newline and carriage return make no sense in a cached text
# value and are a classic log/terminal injection vector.
VALUE_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
TTL_MAX_SECONDS = 30 * 24 * 3600
LARGE_RESPONSE_MAX_KB = 4096


class JSONBytes(Response):
    """JSON rendered by orjson (several times faster than the standard library encoder)."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


class RedisUnavailable(Exception):
    """Turned into 503 by app.main; carries no connection details, which may hold credentials."""


async def redis_call(settings: Settings, awaitable: Awaitable[T]) -> T:
    """Bounds a Redis round trip as a whole (pool wait + retry included) and maps failure to 503.

    The socket timeouts alone bound each attempt; this bounds the sum, so no call waits on an
    unreachable Redis for longer than two socket timeouts.
    """
    try:
        async with asyncio.timeout(2 * settings.redis_socket_timeout):
            return await awaitable
    except TimeoutError as error:
        raise RedisUnavailable("timeout") from error
    except RedisError as error:
        raise RedisUnavailable(type(error).__name__) from error


def _settings(request: Request) -> Settings:
    return request.state.settings


def _redis(request: Request) -> Redis:
    return request.state.redis


# ---- liveness and readiness -------------------------------------------------------------------


@router.get("/health")
async def health(request: Request) -> Response:
    # Constant for the life of the worker, so encoded once at start-up (see app.main.lifespan).
    return Response(request.state.health_body, media_type="application/json")


async def _scheduler_state(redis: Redis, settings: Settings) -> tuple[dict | None, dict | None]:
    return (
        await schedule_state.read_heartbeat(redis, settings),
        await schedule_state.read_leader(redis, settings),
    )


@router.get("/ready")
async def ready(request: Request) -> Response:
    settings, redis = _settings(request), _redis(request)
    redis_check: dict = {"ok": False}
    scheduler_check: dict = {
        "ok": False,
        "leader": None,
        "fence": None,
        "heartbeat_age_seconds": None,
        "max_age_seconds": settings.ready_heartbeat_max_age,
    }
    try:
        started = time.perf_counter()
        await redis_call(settings, redis.ping())
        redis_check = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
        heartbeat, leader = await redis_call(settings, _scheduler_state(redis, settings))
    except RedisUnavailable as error:
        target = scheduler_check if redis_check["ok"] else redis_check
        target["error"] = f"redis unavailable ({error})"
    else:
        if leader is not None:
            scheduler_check["leader"] = leader["id"]
            scheduler_check["fence"] = leader["fence"]
        if heartbeat is None:
            scheduler_check["error"] = "no scheduler heartbeat"
        else:
            # Wall clocks of two hosts: a heartbeat "from the future" is simply fresh.
            age = max(0.0, time.time() - heartbeat["at"])
            scheduler_check["heartbeat_age_seconds"] = round(age, 3)
            scheduler_check["ok"] = age <= settings.ready_heartbeat_max_age
            if not scheduler_check["ok"]:
                scheduler_check["error"] = "scheduler heartbeat is stale"
    is_ready = redis_check["ok"] and scheduler_check["ok"]
    return JSONBytes(
        {
            "status": "ready" if is_ready else "not_ready",
            "checks": {"redis": redis_check, "scheduler": scheduler_check},
        },
        status_code=200 if is_ready else 503,
    )


# ---- cache -------------------------------------------------------------------------------------

CacheKey = Annotated[
    str,
    Path(
        min_length=1,
        max_length=KEY_MAX_LENGTH,
        pattern=KEY_PATTERN,
        description="Letters, digits and _ . : -",
    ),
]


class CacheValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Annotated[str, Field(max_length=VALUE_MAX_LENGTH, pattern=VALUE_PATTERN)]
    ttl: Annotated[StrictInt, Field(ge=1, le=TTL_MAX_SECONDS)] | None = Field(
        default=None, description="Seconds until the value expires; null keeps it until deleted."
    )


def _cache_key(settings: Settings, key: str) -> str:
    return f"{settings.redis_key_prefix}cache:{key}"


async def _get_with_ttl(redis: Redis, name: str) -> list:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(name)
        pipe.ttl(name)
        return await pipe.execute()


@router.get("/cache/{key}")
async def cache_get(key: CacheKey, request: Request) -> Response:
    settings = _settings(request)
    value, ttl = await redis_call(
        settings, _get_with_ttl(_redis(request), _cache_key(settings, key))
    )
    if value is None:
        return JSONBytes({"detail": "key not found"}, status_code=404)
    return JSONBytes({"key": key, "value": value, "ttl": ttl if ttl >= 0 else None})


@router.put("/cache/{key}")
async def cache_put(key: CacheKey, body: CacheValue, request: Request) -> Response:
    settings = _settings(request)
    await redis_call(
        settings, _redis(request).set(_cache_key(settings, key), body.value, ex=body.ttl)
    )
    return JSONBytes({"key": key, "ttl": body.ttl})


@router.delete("/cache/{key}")
async def cache_delete(key: CacheKey, request: Request) -> Response:
    settings = _settings(request)
    deleted = await redis_call(settings, _redis(request).delete(_cache_key(settings, key)))
    if not deleted:
        return JSONBytes({"detail": "key not found"}, status_code=404)
    return Response(status_code=204)


# ---- large response ----------------------------------------------------------------------------


@lru_cache(maxsize=16)
def build_large_payload(kb: int) -> dict:
    """A realistic-looking JSON document of about `kb` KiB (records, numbers, repeated words).

    Built once per size and worker (at most 16 sizes x 4 MiB, so walking through every size cannot
    grow it); what each request pays for is the serialisation, done by orjson.
    """
    items, size, target = [], 0, kb * 1024
    while size < target:
        item = _record(len(items))
        items.append(item)
        size += len(orjson.dumps(item)) + 1
    return {"kb": kb, "items": items}


_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


def _record(i: int) -> dict:
    return {
        "id": i,
        "name": f"item-{i:07d}",
        "active": i % 3 != 0,
        "score": round((i * 7919 % 10007) / 100.0, 2),
        "tags": [_WORDS[i % 8], _WORDS[(i * 3) % 8]],
        "note": f"{_WORDS[(i * 5) % 8]} {_WORDS[(i * 7) % 8]} record {i}",
    }


@router.get("/large-response")
async def large_response(
    kb: Annotated[int, Query(ge=1, le=LARGE_RESPONSE_MAX_KB)] = 500,
) -> Response:
    return JSONBytes(build_large_payload(kb))


# ---- scheduler ---------------------------------------------------------------------------------


@router.get("/jobs")
async def jobs(request: Request) -> Response:
    settings, redis = _settings(request), _redis(request)
    leader, job_list = await redis_call(settings, _jobs_state(redis, settings))
    return JSONBytes({"leader": leader, "jobs": job_list})


async def _jobs_state(redis: Redis, settings: Settings) -> tuple[dict | None, list[dict]]:
    return (
        await schedule_state.read_leader(redis, settings),
        await schedule_state.read_jobs(redis, settings),
    )
