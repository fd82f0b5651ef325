"""Every job of the scheduler daemon, declared in one place (declare() below).

A job is an async function taking a JobContext. It runs on the leader only, once per scheduled
time across all scheduler processes; its scheduled times are the multiples of its interval
since the Unix epoch, the same on every host. A job that writes somewhere other than Redis
should pass ctx.fence along and have the writes of an older fence refused there: a leader can
be deposed while one of its runs is still going.
"""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis

from app import schedule_state
from app.settings import Settings


@dataclass(frozen=True)
class JobContext:
    redis: Redis
    settings: Settings
    job_id: str
    scheduled: datetime
    leader: str
    fence: int


@dataclass(frozen=True)
class Job:
    id: str
    func: Callable[[JobContext], Awaitable[None]]
    interval: float


async def heartbeat(ctx: JobContext) -> None:
    """What /ready reads to tell whether a scheduler leader is alive."""
    await schedule_state.write_heartbeat(
        ctx.redis, ctx.settings, time.time(), ctx.leader, ctx.fence
    )


EXAMPLE_TICKS_KEPT = 100


async def example(ctx: JobContext) -> None:
    """Stands in for real periodic work: appends its scheduled time to <prefix>example:ticks.

    The list is written by the job body itself, so a scheduled time appearing twice in it would
    be a duplicate run, whatever the scheduler's own run records say.
    """
    key = f"{ctx.settings.redis_key_prefix}example:ticks"
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.rpush(key, schedule_state.iso(ctx.scheduled))
        pipe.ltrim(key, -EXAMPLE_TICKS_KEPT, -1)
        await pipe.execute()


def declare(settings: Settings) -> list[Job]:
    return [
        Job("heartbeat", heartbeat, settings.scheduler_heartbeat_seconds),
        Job("example", example, settings.scheduler_tick_seconds),
    ]
