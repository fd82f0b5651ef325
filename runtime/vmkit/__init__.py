"""The kit's runtime: what every app deployed by the kit gets without writing it.

- vmkit.worker: the gunicorn worker (UvicornWorker) with the JSON access line per request;
- vmkit.probes: the liveness and readiness router (`app.include_router(vmkit.probes.router)`);
- vmkit.redis: the process's Redis pool, bounded calls, 503 on an outage;
- vmkit.database: the process's PostgreSQL pool (asyncpg), bounded waits, 503 on an outage;
- vmkit.scheduler: the scheduler daemon with its Redis lease, and `Job` for an app's job list;
- vmkit.request_metrics, vmkit.metrics_listener: Prometheus metrics of every worker, summed and
  served by the gunicorn master on a private listener, and the scheduler's on its own (docs/metrics.md);
- vmkit.settings, vmkit.logs, vmkit.worker_ids, vmkit.loop_and_parser: settings, JSON logs, worker ids
  and which event loop and HTTP parser a worker runs, used by gunicorn.conf.py and the pieces above.
"""
