"""Pure timing logic behind the lease and the scheduled times."""

from datetime import UTC, datetime, timedelta

from vmkit.scheduler.jobs import Job
from vmkit.scheduler.lease import Backoff
from vmkit.scheduler.daemon import latest_fire_time, trigger_for


def test_backoff_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(initial=0.5, cap=5.0)
    delays = [backoff.next() for _ in range(8)]
    for delay, nominal in zip(delays, [0.5, 1, 2, 4, 5, 5, 5, 5], strict=True):
        assert 0.8 * nominal <= delay <= nominal
    backoff.reset()
    assert 0.4 <= backoff.next() <= 0.5


async def _noop(ctx):
    return None


def test_every_process_computes_the_same_scheduled_times():
    # Two processes that start at different moments must name a run by the same time,
    # or the (job, scheduled time) claim would not deduplicate anything.
    job = Job("example", _noop, 7.5)
    first, second = trigger_for(job), trigger_for(job)
    early = datetime(2030, 1, 1, 12, 0, 3, 123456, tzinfo=UTC)
    late = early + timedelta(seconds=100, microseconds=7)
    times_first = [first.get_next_fire_time(None, early)]
    while times_first[-1] < late + timedelta(seconds=30):
        times_first.append(first.get_next_fire_time(times_first[-1], times_first[-1]))
    upcoming = second.get_next_fire_time(None, late)
    assert upcoming in times_first
    assert all(moment.timestamp() % 7.5 == 0 for moment in times_first)


def test_latest_fire_time_is_the_last_scheduled_time_not_after_now():
    trigger = trigger_for(Job("example", _noop, 60))
    on_the_minute = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert latest_fire_time(trigger, on_the_minute) == on_the_minute
    assert latest_fire_time(trigger, on_the_minute + timedelta(seconds=59.9)) == on_the_minute
    assert latest_fire_time(
        trigger, on_the_minute - timedelta(microseconds=1)
    ) == on_the_minute - timedelta(minutes=1)
