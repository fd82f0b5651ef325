"""Work the example app does in the background: POST /tasks queues a text in the data Redis, the
consumer process (app/consumer.py, a unit of its own through api_processes) counts its words,
GET /tasks/{id} shows the result.

Keys, under REDIS_KEY_PREFIX: tasks:queue (list of ids, oldest at the right),
tasks:processing:<host> (the ids the consumer of that host has taken and not finished),
task:<id> (hash: status, text, words, chars).
"""

import socket
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from vmkit.redis import client, redis_call
from vmkit.settings import get_settings

from app.api import BAD_JSON, DATA_FULL, NOT_FOUND, REDIS_DOWN, JSONBytes

router = APIRouter()

TEXT_MAX_LENGTH = 64 * 1024
# A finished task's record is kept this long.
TASK_TTL_SECONDS = 7 * 24 * 3600


def queue_key() -> str:
    return f"{get_settings().redis_key_prefix}tasks:queue"


def processing_key() -> str:
    """One list per host: each api host runs one consumer, which takes back only its own tasks."""
    return f"{get_settings().redis_key_prefix}tasks:processing:{socket.gethostname()}"


def task_key(task_id: str) -> str:
    return f"{get_settings().redis_key_prefix}task:{task_id}"


class TaskText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(max_length=TEXT_MAX_LENGTH)]


TaskId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


@router.post("/tasks", status_code=202, responses={**REDIS_DOWN, **DATA_FULL, **BAD_JSON})
async def task_create(body: TaskText) -> Response:
    """Queues the text; the consumer counts its words."""
    task_id = uuid.uuid4().hex
    await redis_call(_enqueue(client(), task_id, body.text))
    return JSONBytes({"id": task_id, "status": "queued"}, status_code=202)


async def _enqueue(redis: Redis, task_id: str, text: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(task_key(task_id), mapping={"status": "queued", "text": text})
        pipe.expire(task_key(task_id), TASK_TTL_SECONDS)
        pipe.lpush(queue_key(), task_id)
        await pipe.execute()


@router.get("/tasks/{task_id}", responses={**NOT_FOUND, **REDIS_DOWN})
async def task_get(task_id: TaskId) -> Response:
    task = await redis_call(client().hgetall(task_key(task_id)))
    if not task:
        return JSONBytes({"detail": "no such task"}, status_code=404)
    task.pop("text", None)
    return JSONBytes({"id": task_id, **task})


def count(text: str) -> dict[str, int]:
    """The work itself."""
    return {"words": len(text.split()), "chars": len(text)}
