"""The example app's routes: a Redis-backed cache, a large JSON response, the scheduler's jobs.

Redis comes from the kit (vmkit.redis): the cache Redis (`cache_client`, which evicts when full)
for the cache, the data Redis (`client`, which never does) for the counters, and `redis_call`,
which turns an outage into a 503 instead of a 500 or a hung request.
"""

import logging
from functools import lru_cache
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from redis.asyncio import Redis

from vmkit.redis import cache_client, client, redis_call
from vmkit.scheduler import state as schedule_state
from vmkit.settings import get_settings

router = APIRouter()
log = logging.getLogger(__name__)

# What the routes answer besides 200 and FastAPI's own 422, for the OpenAPI schema.
REDIS_DOWN = {503: {"description": "Redis unavailable; nothing was done"}}
DATA_FULL = {507: {"description": "the data Redis is full; nothing was written"}}
NOT_FOUND = {404: {"description": "no such key"}}
BAD_JSON = {400: {"description": "malformed JSON body (the kit answers it before the route)"}}

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


def _cache_key(key: str) -> str:
    return f"{get_settings().redis_key_prefix}cache:{key}"


async def _get_with_ttl(redis: Redis, name: str) -> list:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(name)
        pipe.ttl(name)
        return await pipe.execute()


@router.get("/cache/{key}", responses={**NOT_FOUND, **REDIS_DOWN})
async def cache_get(key: CacheKey) -> Response:
    value, ttl = await redis_call(_get_with_ttl(cache_client(), _cache_key(key)))
    if value is None:
        return JSONBytes({"detail": "key not found"}, status_code=404)
    return JSONBytes({"key": key, "value": value, "ttl": ttl if ttl >= 0 else None})


@router.put("/cache/{key}", responses={**BAD_JSON, **REDIS_DOWN})
async def cache_put(key: CacheKey, body: CacheValue) -> Response:
    await redis_call(cache_client().set(_cache_key(key), body.value, ex=body.ttl))
    return JSONBytes({"key": key, "ttl": body.ttl})


@router.delete("/cache/{key}", status_code=204, responses={**NOT_FOUND, **REDIS_DOWN})
async def cache_delete(key: CacheKey) -> Response:
    deleted = await redis_call(cache_client().delete(_cache_key(key)))
    if not deleted:
        return JSONBytes({"detail": "key not found"}, status_code=404)
    # The kit adds the request's id (X-Request-ID) to this line, as to every line of the request.
    log.info("cache entry deleted", extra={"key": key})
    return Response(status_code=204)


# ---- counters: a non-idempotent endpoint ------------------------------------------------------

CounterName = Annotated[
    str, Path(pattern=r"^[a-z0-9_-]{1,64}$", description="Lower-case letters, digits, _ and -")
]


def counter_key(name: str) -> str:
    return f"{get_settings().redis_key_prefix}counters:{name}"


@router.post("/counters/{name}", responses={
    **REDIS_DOWN,
    **DATA_FULL,
    **BAD_JSON,
    409: {"description": "a request with the same Idempotency-Key is still running"},
})
async def counter_increment(name: CounterName) -> Response:
    """Adds one and returns the new value: a retry after a lost answer would add one again, unless
    the client sends an Idempotency-Key (the kit then runs it once per key)."""
    value = await redis_call(client().incr(counter_key(name)))
    return JSONBytes({"name": name, "value": value})


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


@router.get("/jobs", responses=REDIS_DOWN)
async def jobs() -> Response:
    leader, job_list = await redis_call(_jobs_state(client()))
    return JSONBytes({"leader": leader, "jobs": job_list})


async def _jobs_state(redis: Redis) -> tuple[dict | None, list[dict]]:
    settings = get_settings()
    return (
        await schedule_state.read_leader(redis, settings),
        await schedule_state.read_jobs(redis, settings),
    )
