"""`python -m app.consumer`: the example's background process (api_processes:
{consumer: "python -m app.consumer"}), in the API's release, settings and sandbox.

Takes the tasks POST /tasks queued (app/tasks.py), one at a time, and stores their result. A task
moves from the queue to the processing list while it runs (BLMOVE) and leaves it once its result
is stored, so a task caught by a crash or a kill is taken up again at the next start. SIGTERM lets
the task at hand finish, then the process exits 0.
"""

import asyncio
import logging
import os
import signal

import uvloop
from redis.asyncio import Redis
from redis.exceptions import RedisError

from vmkit.logs import configure_logging
from vmkit.redis import create_redis
from vmkit.settings import get_settings

from app import tasks

log = logging.getLogger("app.consumer")

# BLMOVE waits this long for a task, then the loop looks at the stop flag again; below the Redis
# socket timeout, so a quiet queue is no error.
WAIT_SECONDS = 1
# After a Redis error, wait this long before the next try.
RETRY_SECONDS = 2


async def work_on(redis: Redis, task_id: str) -> None:
    key = tasks.task_key(task_id)
    text = await redis.hget(key, "text")
    if text is not None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"status": "done", **tasks.count(text)})
            pipe.hdel(key, "text")
            pipe.lrem(tasks.processing_key(), 1, task_id)
            await pipe.execute()
        log.info("task done", extra={"task": task_id})
    else:
        # Expired or deleted meanwhile: nothing to do but forget it.
        await redis.lrem(tasks.processing_key(), 1, task_id)


async def requeue_unfinished(redis: Redis) -> int:
    """Tasks a consumer took and never finished go back to the head of the queue."""
    moved = 0
    while await redis.lmove(tasks.processing_key(), tasks.queue_key(), "LEFT", "RIGHT"):
        moved += 1
    return moved


async def consume(redis: Redis, stop: asyncio.Event) -> None:
    requeued = await requeue_unfinished(redis)
    log.info("consumer started", extra={"requeued": requeued, "pid": os.getpid()})
    while not stop.is_set():
        try:
            task_id = await redis.blmove(tasks.queue_key(), tasks.processing_key(), WAIT_SECONDS,
                                         "RIGHT", "LEFT")
            if task_id is not None:
                await work_on(redis, task_id)
        except RedisError as error:
            log.warning("redis unavailable, retrying", extra={"error": str(error)})
            await asyncio.sleep(RETRY_SECONDS)
    log.info("consumer stopped")


async def main() -> None:
    settings = get_settings()
    redis = create_redis(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await consume(redis, stop)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    configure_logging(get_settings().log_level)
    uvloop.run(main())
