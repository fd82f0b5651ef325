"""The scheduler daemon (api-scheduler.service): python -m vmkit.scheduler

Every process runs the same APScheduler jobs (the app's list named by SCHEDULER_JOBS, plus the
kit's heartbeat); only the holder of the leader lease (vmkit.scheduler.lease) runs them, and each
run first claims its (job, scheduled time) in Redis, fenced by the lease (state.claim_run). So
any number of processes on any number of hosts produce one run per scheduled time, also across a
leader handover.

Its metrics (runs, failures, lateness, leadership: vmkit.scheduler.metrics) are served on
SCHEDULER_METRICS_BIND where that is set.

SIGTERM/SIGINT: no new runs, running ones get SCHEDULER_DRAIN_TIMEOUT to finish, the lease is
released (if still ours) so a standby takes over at once, exit 0. Redis outages are retried
with backoff for as long as they last.
"""

import asyncio
import logging
import os
import signal
import socket
import time
from contextlib import suppress
from datetime import UTC, datetime

import uvloop
from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from vmkit.logs import configure_logging
from vmkit.redis import create_redis
from vmkit.scheduler import jobs, metrics
from vmkit.scheduler import state as schedule_state
from vmkit.scheduler.lease import Lease
from vmkit.settings import Settings, get_settings

log = logging.getLogger("vmkit.scheduler")

# Anchoring every interval at the epoch makes all processes on all hosts compute the same
# scheduled times, so a claim on (job, scheduled time) names the same run everywhere.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def trigger_for(job: jobs.Job) -> IntervalTrigger:
    return IntervalTrigger(seconds=job.interval, start_date=EPOCH, timezone=UTC)


def latest_fire_time(trigger: IntervalTrigger, now: datetime) -> datetime:
    upcoming = trigger.get_next_fire_time(None, now)
    return upcoming if upcoming <= now else upcoming - trigger.interval


class Runner:
    """Runs a job for one scheduled time, if this process leads and nobody has claimed it."""

    def __init__(
        self, redis: Redis, settings: Settings, lease: Lease, declared: list[jobs.Job]
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.lease = lease
        self.jobs = {job.id: job for job in declared}
        self.triggers = {job.id: trigger_for(job) for job in declared}
        # A run may start this late: long enough for a standby to take over a dead leader's
        # lease and still run the scheduled time the old leader missed.
        self.grace = 2 * settings.scheduler_lease_ttl
        self.accepting = True
        self.tasks: set[asyncio.Task] = set()
        self._latest_attempt: dict[str, datetime] = {}

    def spawn(self, job_id: str, *run_times: datetime) -> asyncio.Task:
        """Start the run for the latest of run_times; the older ones are coalesced away."""
        return self._track(self._run(self.jobs[job_id], max(run_times)))

    def on_acquired(self) -> None:
        self._track(self._take_over())

    def _track(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _next_run(self, job_id: str) -> str | None:
        return schedule_state.iso(self.triggers[job_id].get_next_fire_time(None, datetime.now(UTC)))

    async def _take_over(self) -> None:
        now = datetime.now(UTC)
        published = [
            {"id": job_id, "trigger": str(trigger), "next_run": self._next_run(job_id)}
            for job_id, trigger in self.triggers.items()
        ]
        try:
            await schedule_state.publish_jobs(self.redis, self.settings, published)
        except RedisError as error:
            log.warning(
                "could not publish the job list",
                extra={"event": "publish_failed", "error": str(error)},
            )
        # The scheduled time just before the takeover may have been missed by the old leader
        # (it died first) or run by it (its claim makes this a no-op).
        for job_id, trigger in self.triggers.items():
            self.spawn(job_id, latest_fire_time(trigger, now))

    async def _run(self, job: jobs.Job, scheduled: datetime) -> None:
        if not self.accepting or not self.lease.is_valid():
            return
        latest = self._latest_attempt.get(job.id)
        if latest is not None and scheduled <= latest:
            return
        started = datetime.now(UTC)
        lateness = (started - scheduled).total_seconds()
        if lateness > self.grace:
            log.warning(
                "scheduled run missed",
                extra={
                    "event": "job_missed",
                    "job": job.id,
                    "scheduled": schedule_state.iso(scheduled),
                    "late_seconds": round(lateness, 3),
                },
            )
            return
        self._latest_attempt[job.id] = scheduled
        fence = self.lease.fence
        leader = self.lease.holder_id
        record = schedule_state.run_record(scheduled, leader, fence, "running", started)
        try:
            claim = await schedule_state.claim_run(
                self.redis, self.settings, job.id, scheduled, record, self.lease.token
            )
        except RedisError as error:
            log.warning(
                "run skipped: redis unavailable",
                extra={
                    "event": "job_skipped",
                    "job": job.id,
                    "scheduled": record["scheduled"],
                    "error": str(error),
                },
            )
            return
        if claim != schedule_state.CLAIMED:
            log.debug(
                "run skipped",
                extra={
                    "event": "job_skipped",
                    "job": job.id,
                    "scheduled": record["scheduled"],
                    "reason": (
                        "already claimed"
                        if claim == schedule_state.ALREADY_CLAIMED
                        else "not leader"
                    ),
                },
            )
            return

        metrics.JOB_RUNS.labels(job.id).inc()
        metrics.JOB_LATENESS.labels(job.id).observe(lateness)
        clock = time.monotonic()
        context = jobs.JobContext(self.redis, self.settings, job.id, scheduled, leader, fence)
        outcome = "error"
        try:
            await job.func(context)
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:
            log.exception(
                "job failed",
                extra={"event": "job_error", "job": job.id, "scheduled": record["scheduled"]},
            )
        finally:
            duration = time.monotonic() - clock
            if outcome == "ok":
                metrics.JOB_LAST_SUCCESS.labels(job.id).set_to_current_time()
            else:
                metrics.JOB_FAILURES.labels(job.id).inc()
            record.update(outcome=outcome, finished=schedule_state.iso(datetime.now(UTC)))
            log.log(
                logging.INFO if outcome == "ok" else logging.WARNING,
                "job run",
                extra={
                    "event": "job_run",
                    "job": job.id,
                    "scheduled": record["scheduled"],
                    "outcome": outcome,
                    "duration_seconds": round(duration, 3),
                    "leader": leader,
                    "fence": fence,
                },
            )
            try:
                await schedule_state.finish_run(
                    self.redis, self.settings, job.id, scheduled, record, self._next_run(job.id)
                )
            except RedisError as error:
                log.warning(
                    "could not record the run outcome",
                    extra={
                        "event": "record_failed",
                        "job": job.id,
                        "scheduled": record["scheduled"],
                        "error": str(error),
                    },
                )

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for running jobs, then cancel the rest."""
        if not self.tasks:
            return
        log.info(
            "waiting for running jobs",
            extra={"event": "drain", "running": len(self.tasks), "timeout": timeout},
        )
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        if pending:
            log.warning(
                "drain timeout, cancelling jobs",
                extra={"event": "drain_timeout", "cancelled": len(pending)},
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


class RunnerExecutor(BaseExecutor):
    """Hands each firing to the Runner together with its scheduled time.

    APScheduler's stock executors call the job function without the scheduled time, and the
    claim needs it; they would also cancel running jobs on shutdown, where we drain them.
    """

    def _do_submit_job(self, job, run_times):
        task = job.func(*job.args, *run_times)
        task.add_done_callback(lambda _: self._run_job_success(job.id, []))


def build_scheduler(runner: Runner) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone=UTC, executors={"default": RunnerExecutor()})
    for job_id, trigger in runner.triggers.items():
        # Overlapping runs of one job are refused (max_instances=1); runs due while the loop
        # was busy collapse into one (coalesce), which the Runner bounds by its grace period.
        scheduler.add_job(
            runner.spawn,
            trigger,
            args=[job_id],
            id=job_id,
            name=job_id,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
    return scheduler


async def serve(settings: Settings, declared: list[jobs.Job]) -> None:
    redis = create_redis(settings)
    lease = Lease(redis, settings, f"{socket.gethostname()}:{os.getpid()}")
    runner = Runner(redis, settings, lease, declared)
    if settings.scheduler_metrics_bind:
        metrics.serve(settings.scheduler_metrics_bind, lease, list(runner.jobs))

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _request_stop, stopping, signum)

    scheduler = build_scheduler(runner)
    scheduler.start()
    keeper = asyncio.create_task(lease.keep(runner.on_acquired))
    log.info(
        "scheduler started",
        extra={
            "event": "started",
            "holder": lease.holder_id,
            "lease_ttl": lease.ttl,
            "jobs": {job.id: job.interval for job in declared},
        },
    )

    stop_requested = asyncio.create_task(stopping.wait())
    await asyncio.wait({keeper, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    if keeper.done():
        # Only a bug ends the keeper (it retries every Redis error); exit non-zero so the
        # service manager restarts the process instead of leaving a scheduler that never leads.
        stop_requested.cancel()
        await redis.aclose()
        keeper.result()

    runner.accepting = False
    scheduler.shutdown(wait=False)
    if lease.fence is None:
        # A standby that is going away must not become leader during its own shutdown.
        await _stop(keeper)
    # A leader keeps renewing while it drains: its running jobs are still fenced by the lease.
    await runner.drain(settings.scheduler_drain_timeout)
    await _stop(keeper)
    await _release(lease, settings)
    await redis.aclose()
    log.info("scheduler stopped", extra={"event": "stopped"})


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def _request_stop(stopping: asyncio.Event, signum: int) -> None:
    if not stopping.is_set():
        log.info(
            "shutdown requested", extra={"event": "stopping", "signal": signal.Signals(signum).name}
        )
    stopping.set()


async def _release(lease: Lease, settings: Settings) -> None:
    fence = lease.fence
    if fence is None:
        return
    try:
        async with asyncio.timeout(2 * settings.redis_socket_timeout):
            released = await lease.release()
    except (RedisError, OSError, TimeoutError) as error:
        log.warning(
            "could not release the lease, it expires by itself",
            extra={"event": "release_failed", "error": str(error), "lease_ttl": lease.ttl},
        )
        return
    if released:
        log.info(
            "leadership released",
            extra={"event": "leader_released", "leader": lease.holder_id, "fence": fence},
        )


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    if not settings.scheduler_jobs:
        log.error("SCHEDULER_JOBS is not set: nothing to schedule", extra={"event": "no_jobs"})
        raise SystemExit(2)
    try:
        declared = jobs.load_jobs(settings)
    except jobs.BadJobList as error:
        log.error(str(error), extra={"event": "bad_job_list"})
        raise SystemExit(2) from None
    uvloop.run(serve(settings, declared))
