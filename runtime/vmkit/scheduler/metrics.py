"""The scheduler daemon's metrics, served on SCHEDULER_METRICS_BIND (docs/metrics.md lists them).

The daemon is one process, so its metrics live in its memory (prometheus_client's default
registry, with the process's CPU and memory beside them). prometheus_client decides on its
multiprocess mode, files in PROMETHEUS_MULTIPROC_DIR, when it is first imported: the variable is
dropped here first so that an environment shared with the API cannot switch it. This module is
imported by vmkit.scheduler.daemon only, never by the API.
"""

import os

os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
os.environ.pop("prometheus_multiproc_dir", None)

from prometheus_client import (  # noqa: E402
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

from vmkit import metrics_listener  # noqa: E402
from vmkit.scheduler.lease import Lease  # noqa: E402

# A `_created` series beside every counter and histogram doubles what Prometheus stores, for a
# start time that process_start_time_seconds already gives.
disable_created_metrics()

JOB_RUNS = Counter("scheduler_job_runs", "Runs started (claimed) by this daemon", ["job"])
JOB_FAILURES = Counter(
    "scheduler_job_failures", "Runs that raised or were cancelled by the drain timeout", ["job"]
)
JOB_LATENESS = Histogram(
    "scheduler_job_lateness_seconds",
    "Seconds between a run's scheduled time and its start",
    ["job"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOB_LAST_SUCCESS = Gauge(
    "scheduler_job_last_success_timestamp_seconds",
    "Unix time at which this daemon last finished a run of the job without error",
    ["job"],
)


class LeaseCollector(Collector):
    """Read from the lease at each scrape, so it is never stale: scheduler_is_leader (1 while
    this daemon holds the lease and runs jobs) and, from the leader only,
    scheduler_lease_holder_info naming it."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    def collect(self):
        leading = self.lease.is_valid()
        yield GaugeMetricFamily(
            "scheduler_is_leader", "1 while this daemon holds the leader lease", value=int(leading)
        )
        holder = GaugeMetricFamily(
            "scheduler_lease_holder_info",
            "1, labelled with the lease holder's id (host:pid); exported by the leader only",
            labels=["holder"],
        )
        if leading:
            holder.add_metric([self.lease.holder_id], 1)
        yield holder


def serve(bind: str, lease: Lease, job_ids: list[str]) -> None:
    # Every job's counters exist from the start at 0, so that rate() sees their first increase.
    for job_id in job_ids:
        JOB_RUNS.labels(job_id)
        JOB_FAILURES.labels(job_id)
    REGISTRY.register(LeaseCollector(lease))
    metrics_listener.serve(bind, REGISTRY)
