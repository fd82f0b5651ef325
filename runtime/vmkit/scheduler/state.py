"""The scheduler's state in Redis: key names, the writes of the daemon, the reads of the API.

The API process has no scheduler of its own, so the leader publishes what only it knows
(trigger descriptions, next run times, run records, heartbeat) and /ready and /jobs read it here.

Keys, all under settings.redis_key_prefix ("api:" by default):
  scheduler:leader        string, JSON {"id","token","fence"}, expires after the lease TTL
  scheduler:fence         integer, INCR on every lease acquisition (the fencing counter)
  scheduler:heartbeat     string, JSON {"at","leader","fence"}, written by the heartbeat job
  scheduler:jobs          set of the job ids the current leader declares
  scheduler:job:<id>      hash {"trigger","next_run","run_count"}
  scheduler:runs:<id>     sorted set, member = scheduled time in epoch ms, score = epoch seconds;
                          the claim index: one member per (job, scheduled time) ever started
  scheduler:runlog:<id>   hash, field = scheduled time in epoch ms, value = JSON run record
                          {"scheduled","leader","fence","outcome","started","finished"}
"""

from datetime import UTC, datetime

import orjson
from redis.asyncio import Redis

from vmkit.settings import Settings

# Runs shown per job by /jobs.
RECENT_RUNS = 10
# Claims are the duplicate guard, so they are kept far longer than any process could still
# attempt a scheduled time (misfire grace plus clock skew between hosts)...
CLAIM_RETENTION_SECONDS = 3600
# ...and a job that runs rarely keeps at least this many records for /jobs.
KEEP_RUNS = 50

# Claims (job, scheduled time) for the caller only while the caller's lease is still the one in
# Redis (same token, same fence): a deposed leader cannot start a run, whatever it believes.
# Re-sending the identical record (a retry after a lost reply) counts as the caller's own claim.
_CLAIM_SCRIPT = """
local lease = redis.call('get', KEYS[1])
if not lease then return -1 end
local held = cjson.decode(lease)
if held.token ~= ARGV[1] or held.fence ~= tonumber(ARGV[2]) then return -1 end
local existing = redis.call('hget', KEYS[3], ARGV[3])
if existing then
  if existing == ARGV[5] then return 1 end
  return 0
end
redis.call('zadd', KEYS[2], ARGV[4], ARGV[3])
redis.call('hset', KEYS[3], ARGV[3], ARGV[5])
redis.call('hincrby', KEYS[4], 'run_count', 1)
local excess = redis.call('zcard', KEYS[2]) - tonumber(ARGV[7])
if excess > 0 then
  local old = redis.call('zrangebyscore', KEYS[2], '-inf', '(' .. ARGV[6],
                         'LIMIT', 0, math.min(excess, 1000))
  if #old > 0 then
    redis.call('zrem', KEYS[2], unpack(old))
    redis.call('hdel', KEYS[3], unpack(old))
  end
end
return 1
"""

CLAIMED = 1
ALREADY_CLAIMED = 0
NOT_LEADER = -1


def _key(settings: Settings, *parts: str) -> str:
    return settings.redis_key_prefix + ":".join(("scheduler", *parts))


def leader_key(settings: Settings) -> str:
    return _key(settings, "leader")


def fence_key(settings: Settings) -> str:
    return _key(settings, "fence")


def heartbeat_key(settings: Settings) -> str:
    return _key(settings, "heartbeat")


def jobs_key(settings: Settings) -> str:
    return _key(settings, "jobs")


def job_key(settings: Settings, job_id: str) -> str:
    return _key(settings, "job", job_id)


def runs_key(settings: Settings, job_id: str) -> str:
    return _key(settings, "runs", job_id)


def runlog_key(settings: Settings, job_id: str) -> str:
    return _key(settings, "runlog", job_id)


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a Z, the format of every time /jobs shows."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scheduled_member(scheduled: datetime) -> str:
    # Milliseconds: every process derives the same member from the same trigger, whatever
    # floating-point noise its own datetime arithmetic adds below that.
    return str(round(scheduled.timestamp() * 1000))


def run_record(
    scheduled: datetime,
    leader: str,
    fence: int,
    outcome: str,
    started: datetime,
    finished: datetime | None = None,
) -> dict:
    return {
        "scheduled": iso(scheduled),
        "leader": leader,
        "fence": fence,
        "outcome": outcome,
        "started": iso(started),
        "finished": iso(finished),
    }


async def write_heartbeat(
    redis: Redis, settings: Settings, at: float, leader: str, fence: int
) -> None:
    value = {"at": at, "leader": leader, "fence": fence}
    await redis.set(heartbeat_key(settings), orjson.dumps(value))


async def publish_jobs(redis: Redis, settings: Settings, jobs: list[dict]) -> None:
    """Replace the declared jobs (each {"id","trigger","next_run"}) with the leader's own."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(jobs_key(settings))
        if jobs:
            pipe.sadd(jobs_key(settings), *(job["id"] for job in jobs))
        for job in jobs:
            pipe.hset(
                job_key(settings, job["id"]),
                mapping={"trigger": job["trigger"], "next_run": job["next_run"] or ""},
            )
        await pipe.execute()


async def claim_run(
    redis: Redis, settings: Settings, job_id: str, scheduled: datetime, record: dict, token: str
) -> int:
    """CLAIMED, ALREADY_CLAIMED (another process or term started it) or NOT_LEADER."""
    script = redis.register_script(_CLAIM_SCRIPT)
    horizon = scheduled.timestamp() - CLAIM_RETENTION_SECONDS
    return int(
        await script(
            keys=[
                leader_key(settings),
                runs_key(settings, job_id),
                runlog_key(settings, job_id),
                job_key(settings, job_id),
            ],
            args=[
                token,
                record["fence"],
                scheduled_member(scheduled),
                scheduled.timestamp(),
                orjson.dumps(record),
                horizon,
                KEEP_RUNS,
            ],
        )
    )


async def finish_run(
    redis: Redis,
    settings: Settings,
    job_id: str,
    scheduled: datetime,
    record: dict,
    next_run: str | None,
) -> None:
    # Not fenced: it records what did happen, even for a run whose leader was deposed meanwhile.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(runlog_key(settings, job_id), scheduled_member(scheduled), orjson.dumps(record))
        pipe.hset(job_key(settings, job_id), "next_run", next_run or "")
        await pipe.execute()


def _loads(raw: str | None) -> dict | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def read_heartbeat(redis: Redis, settings: Settings) -> dict | None:
    """{"at": epoch seconds, "leader": str, "fence": int} of the last heartbeat, or None."""
    value = _loads(await redis.get(heartbeat_key(settings)))
    if value is None or not {"at", "leader", "fence"} <= value.keys():
        return None
    return {"at": float(value["at"]), "leader": str(value["leader"]), "fence": int(value["fence"])}


async def read_leader(redis: Redis, settings: Settings) -> dict | None:
    """{"id": str, "fence": int, "ttl_seconds": float} of the current lease, or None.

    The lease token is left out: it is what makes renewals safe, and nobody else needs it.
    """
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(leader_key(settings))
        pipe.pttl(leader_key(settings))
        raw, pttl = await pipe.execute()
    value = _loads(raw)
    if value is None or pttl < 0:
        return None
    return {"id": str(value["id"]), "fence": int(value["fence"]), "ttl_seconds": pttl / 1000}


async def read_jobs(redis: Redis, settings: Settings) -> list[dict]:
    """The declared jobs, each with its newest RECENT_RUNS run records (newest first)."""
    job_ids = sorted(await redis.smembers(jobs_key(settings)))
    if not job_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hgetall(job_key(settings, job_id))
            pipe.zrevrange(runs_key(settings, job_id), 0, RECENT_RUNS - 1)
        replies = await pipe.execute()
    metas, members = replies[0::2], replies[1::2]
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, recent in zip(job_ids, members, strict=True):
            if recent:
                pipe.hmget(runlog_key(settings, job_id), recent)
        records = iter(await pipe.execute())
    jobs = []
    for job_id, meta, recent in zip(job_ids, metas, members, strict=True):
        runs = [run for run in map(_loads, next(records) if recent else []) if run is not None]
        jobs.append(
            {
                "id": job_id,
                "trigger": meta.get("trigger") or None,
                "next_run": meta.get("next_run") or None,
                "last_run": runs[0]["scheduled"] if runs else None,
                "last_outcome": runs[0]["outcome"] if runs else None,
                "run_count": int(meta.get("run_count", 0)),
                "recent_runs": runs,
            }
        )
    return jobs
