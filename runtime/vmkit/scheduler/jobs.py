"""What a job list is made of, and the kit's own job.

An app's job list is a list of `Job`s named by SCHEDULER_JOBS (`module:attribute`). A job is an
async function taking a JobContext. It runs on the leader only, once per scheduled time across
all scheduler processes; its scheduled times are the multiples of its interval since the Unix
epoch, the same on every host. A job that writes somewhere other than Redis should pass
ctx.fence along and have the writes of an older fence refused there: a leader can be deposed
while one of its runs is still going.

The kit adds its heartbeat job (what the readiness probe reads) to every list by itself.
"""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis
from uvicorn.importer import ImportFromStringError, import_from_string

from vmkit.scheduler import state
from vmkit.settings import Settings

HEARTBEAT_JOB_ID = "heartbeat"


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
    await state.write_heartbeat(ctx.redis, ctx.settings, time.time(), ctx.leader, ctx.fence)


class BadJobList(Exception):
    """SCHEDULER_JOBS does not name a usable job list; the message says why."""


def load_jobs(settings: Settings) -> list[Job]:
    """The heartbeat plus the app's jobs named by SCHEDULER_JOBS."""
    try:
        declared = import_from_string(settings.scheduler_jobs)
    except ImportFromStringError as error:
        raise BadJobList(f"SCHEDULER_JOBS={settings.scheduler_jobs!r}: {error}") from None
    if not isinstance(declared, (list, tuple)) or not all(isinstance(j, Job) for j in declared):
        raise BadJobList(
            f"SCHEDULER_JOBS={settings.scheduler_jobs!r} must name a list of vmkit.scheduler.Job"
        )
    ids = [job.id for job in declared]
    clashes = {i for i in ids if ids.count(i) > 1 or i == HEARTBEAT_JOB_ID}
    if clashes:
        raise BadJobList(f"SCHEDULER_JOBS: job ids must be unique and not {HEARTBEAT_JOB_ID!r}: "
                         f"{sorted(clashes)}")
    return [Job(HEARTBEAT_JOB_ID, heartbeat, settings.scheduler_heartbeat_seconds), *declared]
