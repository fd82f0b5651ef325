"""The example app's scheduled jobs: the list SCHEDULER_JOBS names (`app.jobs:jobs`).

Each runs once per scheduled time across every scheduler process (see vmkit.scheduler). The
kit adds its own heartbeat job; removing every job here leaves the deploy gate working.
"""

from vmkit.scheduler import Job, JobContext
from vmkit.scheduler.state import iso

from app.settings import get_settings

EXAMPLE_TICKS_KEPT = 100


async def example(ctx: JobContext) -> None:
    """Stands in for real periodic work: appends its scheduled time to <prefix>example:ticks.

    The list is written by the job body itself, so a scheduled time appearing twice in it would
    be a duplicate run, whatever the scheduler's own run records say.
    """
    key = f"{ctx.settings.redis_key_prefix}example:ticks"
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.rpush(key, iso(ctx.scheduled))
        pipe.ltrim(key, -EXAMPLE_TICKS_KEPT, -1)
        await pipe.execute()


jobs = [Job("example", example, get_settings().scheduler_tick_seconds)]
