"""The scheduler daemon against a real redis-server: real `python -m vmkit.scheduler` processes
running the example app's job list (SCHEDULER_JOBS=app.jobs:jobs) or one written by a test.

Every daemon runs with a 1 s tick and a short lease TTL. Each test gets its own password-
protected redis-server (the outage test stops and restarts it on the same port), and the
password doubles as a check that no daemon ever logs REDIS_URL.
"""

import asyncio
import secrets
import signal
import textwrap
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
from support import (
    Process,
    RedisServer,
    free_port,
    samples_of,
    scheduler_process,
    scrape,
    wait_until,
)

from vmkit.redis import create_redis
from vmkit.scheduler import state as schedule_state
from vmkit.scheduler.lease import Lease
from vmkit.settings import Settings

TICK = 1.0

# A job list with one extra job, "slow", that is still running when the tests send SIGTERM.
SLOW_JOBS = textwrap.dedent("""
    import asyncio
    from vmkit.scheduler import Job
    from app.jobs import jobs as example_jobs

    async def slow(ctx):
        await asyncio.sleep({seconds})

    jobs = [*example_jobs, Job("slow", slow, {interval})]
    """)


@pytest.fixture
def redis_instance(tmp_path):
    server = RedisServer(tmp_path / "redis", password=secrets.token_hex(12)).start()
    yield server
    server.stop()


@pytest.fixture
def spawn(tmp_path, redis_instance):
    """spawn(count, jobs_source=None, **settings) starts scheduler daemons, running the job list
    `jobs` of a module with jobs_source if given; any still running at the end are stopped."""
    started: list[Process] = []

    def start(count: int = 1, jobs_source: str | None = None, **overrides) -> list[Process]:
        env = {
            "REDIS_URL": redis_instance.url,
            "SCHEDULER_TICK_SECONDS": str(TICK),
            "SCHEDULER_HEARTBEAT_SECONDS": "1",
            "SCHEDULER_LEASE_TTL": "3",
            "SCHEDULER_DRAIN_TIMEOUT": "10",
            "LOG_LEVEL": "info",
            **{key.upper(): str(value) for key, value in overrides.items()},
        }
        if jobs_source:
            (tmp_path / "test_jobs.py").write_text(jobs_source)
            env.update(SCHEDULER_JOBS="test_jobs:jobs", PYTHONPATH=str(tmp_path))
        daemons = []
        for _ in range(count):
            daemon = scheduler_process(tmp_path / f"scheduler-{len(started)}.log", **env)
            started.append(daemon.start())
            daemons.append(daemon)
        return daemons

    yield start
    for daemon in started:
        daemon.stop(timeout=5)


def client_of(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=2)


def events(daemon: Process, name: str) -> list[dict]:
    return [line for line in daemon.log_lines() if line.get("event") == name]


def leader(client: redis.Redis) -> dict | None:
    raw = client.get("api:scheduler:leader")
    return orjson.loads(raw) if raw else None


def leader_pid(client: redis.Redis) -> int | None:
    current = leader(client)
    return int(current["id"].rsplit(":", 1)[1]) if current else None


def ticks(client: redis.Redis) -> list[str]:
    """Scheduled times the example job's body actually ran for, in execution order."""
    return client.lrange("api:example:ticks", 0, -1)


def records(client: redis.Redis, job_id: str) -> list[dict]:
    """Run records of job_id, oldest scheduled time first."""
    entries = client.hgetall(f"api:scheduler:runlog:{job_id}")
    return [orjson.loads(entries[member]) for member in sorted(entries, key=int)]


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


def stop_all(daemons: list[Process], server: RedisServer) -> None:
    """SIGTERM each daemon, the leader last so no standby takes over after it released."""
    holder = leader_pid(client_of(server))
    for daemon in sorted(daemons, key=lambda daemon: daemon.pid == holder):
        assert daemon.stop() == 0, daemon.output()[-3000:]
        assert server.password not in daemon.output()


def assert_no_duplicates(client: redis.Redis) -> list[str]:
    executed = ticks(client)
    assert len(executed) == len(set(executed)), f"a scheduled time ran twice: {executed}"
    recorded = [
        record["scheduled"] for record in records(client, "example") if record["outcome"] == "ok"
    ]
    assert sorted(recorded) == sorted(executed)
    return executed


@pytest.mark.parametrize("count", [2, 3])
def test_one_run_per_scheduled_time_across_processes(spawn, redis_instance, count):
    client = client_of(redis_instance)
    daemons = spawn(count)
    wait_until(lambda: len(ticks(client)) >= 5, 20, "five example runs")
    holder = leader_pid(client)
    stop_all(daemons, redis_instance)

    executed = assert_no_duplicates(client)
    # One steady leader: consecutive scheduled times, none skipped, all run by it.
    gaps = {parse(later) - parse(earlier) for earlier, later in zip(executed, executed[1:])}
    assert gaps == {timedelta(seconds=TICK)}
    assert {record["leader"].rsplit(":", 1)[1] for record in records(client, "example")} == {
        str(holder)
    }
    assert [daemon.pid for daemon in daemons if events(daemon, "job_run")] == [holder]
    heartbeat = orjson.loads(client.get("api:scheduler:heartbeat"))
    assert heartbeat["leader"].endswith(f":{holder}")


def test_metrics_show_job_runs_and_which_daemon_leads(spawn, redis_instance, tmp_path):
    client = client_of(redis_instance)
    ports = [free_port(), free_port()]
    # A PROMETHEUS_MULTIPROC_DIR shared with the API must not put the daemon in multiprocess mode.
    shared = tmp_path / "api-metrics"
    shared.mkdir()
    daemons = [spawn(1, scheduler_metrics_bind=f"127.0.0.1:{port}",
                     prometheus_multiproc_dir=str(shared))[0] for port in ports]
    wait_until(lambda: len(ticks(client)) >= 2, 20, "two example runs")
    holder = leader_pid(client)
    by_pid = {daemon.pid: port for daemon, port in zip(daemons, ports)}

    def leader_counted_two_runs():
        samples = scrape(by_pid[holder])
        runs = samples.get(("scheduler_job_runs_total", frozenset({("job", "example")})), 0)
        return samples if runs >= 2 else None

    samples = wait_until(leader_counted_two_runs, 10, "the leader's metrics to count two runs")
    example = frozenset({("job", "example")})
    assert samples[("scheduler_is_leader", frozenset())] == 1
    [(labels, value)] = samples_of(samples, "scheduler_lease_holder_info").items()
    assert dict(labels)["holder"] == leader(client)["id"] and value == 1
    assert samples[("scheduler_job_failures_total", example)] == 0
    assert samples[("scheduler_job_lateness_seconds_count", example)] >= 2
    assert time.time() - samples[("scheduler_job_last_success_timestamp_seconds", example)] < 10

    [standby] = [pid for pid in by_pid if pid != holder]
    samples = scrape(by_pid[standby])
    assert samples[("scheduler_is_leader", frozenset())] == 0
    assert samples_of(samples, "scheduler_lease_holder_info") == {}
    assert samples[("scheduler_job_runs_total", example)] == 0
    assert list(shared.iterdir()) == []
    stop_all(daemons, redis_instance)


def test_killed_leader_is_replaced_within_the_ttl_without_rerunning(spawn, redis_instance):
    ttl = 2.0
    client = client_of(redis_instance)
    daemons = spawn(2, scheduler_lease_ttl=ttl)
    wait_until(lambda: len(ticks(client)) >= 3, 20, "three example runs")
    old = leader(client)
    victim = next(daemon for daemon in daemons if daemon.pid == leader_pid(client))
    survivor = next(daemon for daemon in daemons if daemon is not victim)

    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(10)
    wait_until(lambda: leader_pid(client) == survivor.pid, ttl + 5, "the standby to take the lease")
    handover = time.monotonic() - killed_at
    # The lease expires at most one TTL after the last renewal; the standby polls every
    # min(1 s, TTL/4) and 1 s more absorbs a busy test machine.
    assert handover <= ttl + min(1.0, ttl / 4) + 1.0, handover

    new = leader(client)
    assert new["fence"] > old["fence"]
    wait_until(
        lambda: sum(record["fence"] == new["fence"] for record in records(client, "example")) >= 3,
        10,
        "three runs by the new leader",
    )
    stop_all([survivor], redis_instance)

    assert_no_duplicates(client)
    runs = records(client, "example")
    old_times = [parse(record["scheduled"]) for record in runs if record["fence"] == old["fence"]]
    new_times = [parse(record["scheduled"]) for record in runs if record["fence"] == new["fence"]]
    assert {record["fence"] for record in runs} == {old["fence"], new["fence"]}
    assert min(new_times) > max(old_times)
    assert events(survivor, "leader_acquired")[-1]["fence"] == new["fence"]


def test_leader_whose_lease_is_taken_stops_running_jobs_at_once(spawn, redis_instance):
    client = client_of(redis_instance)
    [daemon] = spawn(1)
    wait_until(lambda: len(ticks(client)) >= 2, 20, "two example runs")
    ours = leader(client)
    # What a partition looks like from Redis: the lease now belongs to someone else.
    usurper = {"id": "elsewhere:1", "token": "not-ours", "fence": ours["fence"] + 1}
    client.set("api:scheduler:leader", orjson.dumps(usurper), px=60_000)
    taken_at = datetime.now(UTC)
    wait_until(lambda: events(daemon, "leader_lost"), 5, "the daemon to notice it lost the lease")
    # Absence of runs needs time to show: let two more scheduled times pass.
    time.sleep(2 * TICK)
    late = [r for r in records(client, "example") if parse(r["started"]) > taken_at]
    assert late == []

    client.delete("api:scheduler:leader")
    wait_until(lambda: leader_pid(client) == daemon.pid, 5, "the daemon to lead again")
    # It saw the usurper's fence while it was refused, so its new term is numbered above it.
    assert leader(client)["fence"] > usurper["fence"]
    wait_until(
        lambda: any(parse(r["started"]) > taken_at for r in records(client, "example")),
        5,
        "runs under the new term",
    )
    stop_all([daemon], redis_instance)
    assert_no_duplicates(client)


def _running_slow_run(client: redis.Redis, fence: int) -> dict | None:
    return next(
        (
            record
            for record in records(client, "slow")
            if record["outcome"] == "running" and record["fence"] == fence
        ),
        None,
    )


def test_sigterm_lets_the_running_job_finish_then_releases_the_lease(spawn, redis_instance):
    ttl = 6.0
    client = client_of(redis_instance)
    daemons = spawn(2, jobs_source=SLOW_JOBS.format(seconds=1.5, interval=2), scheduler_lease_ttl=ttl)
    holder = wait_until(lambda: leader(client), 10, "a leader")
    leading = next(daemon for daemon in daemons if daemon.pid == leader_pid(client))
    standby = next(daemon for daemon in daemons if daemon is not leading)
    running = wait_until(
        lambda: _running_slow_run(client, holder["fence"]), 10, "a slow run in progress"
    )

    leading.signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    signalled_wall = datetime.now(UTC)
    assert leading.wait(10) == 0, leading.output()[-3000:]
    wait_until(
        lambda: leader_pid(client) == standby.pid, ttl, "the standby to take the released lease"
    )
    # Released, not expired: the standby leads long before a TTL has passed.
    assert time.monotonic() - signalled_at < ttl - 1

    finished = next(
        record for record in records(client, "slow") if record["scheduled"] == running["scheduled"]
    )
    assert finished["outcome"] == "ok"
    assert parse(finished["finished"]) > signalled_wall
    assert all(
        parse(record["started"]) <= signalled_wall
        for record in records(client, "example") + records(client, "slow")
        if record["fence"] == holder["fence"]
    )
    released = events(leading, "leader_released")
    assert [event["fence"] for event in released] == [holder["fence"]]
    stop_all([standby], redis_instance)


def test_drain_timeout_cancels_a_job_that_runs_too_long(spawn, redis_instance):
    client = client_of(redis_instance)
    [daemon] = spawn(
        1, jobs_source=SLOW_JOBS.format(seconds=30, interval=2), scheduler_drain_timeout=0.5
    )
    holder = wait_until(lambda: leader(client), 10, "a leader")
    running = wait_until(
        lambda: _running_slow_run(client, holder["fence"]), 10, "a slow run in progress"
    )

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    assert leader(client) is None
    cancelled = next(
        record for record in records(client, "slow") if record["scheduled"] == running["scheduled"]
    )
    assert cancelled["outcome"] == "cancelled"
    assert events(daemon, "drain_timeout")


def test_daemon_survives_a_redis_outage_and_resumes(spawn, redis_instance):
    client = client_of(redis_instance)
    [daemon] = spawn(1)
    wait_until(lambda: len(ticks(client)) >= 2, 20, "two example runs")

    redis_instance.stop()
    wait_until(lambda: events(daemon, "leader_lost"), 10, "the leader to give up its lease")
    assert events(daemon, "redis_unavailable")
    assert daemon.proc.poll() is None

    redis_instance.start()
    client = client_of(redis_instance)
    # The restarted server is empty; backoff is capped at 5 s.
    wait_until(lambda: len(ticks(client)) >= 2, 15, "example runs after redis came back")
    assert daemon.proc.poll() is None
    assert events(daemon, "redis_recovered")
    # Fences keep growing although the restarted Redis has lost the counter.
    assert leader(client)["fence"] > events(daemon, "leader_lost")[0]["fence"]
    stop_all([daemon], redis_instance)


# The lease and the run claim, exercised in-process against the same real Redis.


def _settings(server: RedisServer, **overrides) -> Settings:
    return Settings(redis_url=server.url, **overrides)


def test_lease_is_exclusive_renewed_and_released_only_by_its_holder(redis_instance):
    async def scenario():
        settings = _settings(redis_instance, scheduler_lease_ttl=5)
        client = create_redis(settings)
        first, second = Lease(client, settings, "host-a:1"), Lease(client, settings, "host-b:2")
        assert await first.acquire() and first.is_valid()
        assert not await second.acquire()
        assert not await second.renew()
        assert not await second.release()
        assert await first.renew()
        assert (await schedule_state.read_leader(client, settings))["id"] == "host-a:1"
        assert await first.release() and not first.is_valid()
        assert await second.acquire()
        assert second.fence > first.fence
        # A standby's failed attempt tells it the current fence, so losing the data (a restart
        # without persistence) does not send fences backwards.
        assert not await first.acquire()
        await client.flushdb()
        assert await first.acquire()
        assert first.fence > second.fence
        await client.aclose()

    asyncio.run(scenario())


def test_expired_lease_is_noticed_by_its_holder_and_taken_by_another(redis_instance):
    async def scenario():
        settings = _settings(redis_instance, scheduler_lease_ttl=1)
        client = create_redis(settings)
        first, second = Lease(client, settings, "host-a:1"), Lease(client, settings, "host-b:2")
        assert await first.acquire()
        await asyncio.sleep(1.1)
        assert not first.is_valid()
        assert await second.acquire()
        assert not await first.renew()
        await client.aclose()

    asyncio.run(scenario())


def test_claim_is_fenced_and_taken_once(redis_instance):
    async def scenario():
        settings = _settings(redis_instance)
        client = create_redis(settings)
        lease = Lease(client, settings, "host-a:1")
        assert await lease.acquire()
        scheduled = datetime(2030, 1, 1, tzinfo=UTC)
        now = datetime.now(UTC)
        record = schedule_state.run_record(scheduled, lease.holder_id, lease.fence, "running", now)
        stale = schedule_state.run_record(
            scheduled, lease.holder_id, lease.fence - 1, "running", now
        )
        rival = schedule_state.run_record(scheduled, "host-b:2", lease.fence, "running", now)

        async def claim(candidate, token=lease.token):
            return await schedule_state.claim_run(
                client, settings, "example", scheduled, candidate, token
            )

        assert await claim(stale) == schedule_state.NOT_LEADER
        assert await claim(record, token="not-the-holder") == schedule_state.NOT_LEADER
        assert await claim(record) == schedule_state.CLAIMED
        # The same record again is a retry after a lost reply; anything else is a second run.
        assert await claim(record) == schedule_state.CLAIMED
        assert await claim(rival) == schedule_state.ALREADY_CLAIMED
        await schedule_state.publish_jobs(
            client, settings, [{"id": "example", "trigger": "interval[0:00:01]", "next_run": None}]
        )
        [job] = await schedule_state.read_jobs(client, settings)
        assert job["run_count"] == 1
        assert job["recent_runs"] == [record]
        assert (job["last_run"], job["last_outcome"], job["next_run"]) == (
            record["scheduled"],
            "running",
            None,
        )
        await client.aclose()

    asyncio.run(scenario())
