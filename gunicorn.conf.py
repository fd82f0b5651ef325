"""gunicorn settings of the kit. `gunicorn -c gunicorn.conf.py` alone starts the service.

Every value comes from the environment through vmkit.settings, the app to serve included
(ASGI_APP, `module:attribute`); a bad or missing value stops gunicorn here, before it binds
anything, with a message naming the variable.

gunicorn executes this file again on every HUP: it must stay free of state (see vmkit.worker_ids).
"""

import os
import sys

from vmkit import metrics_listener, worker_ids
from vmkit.settings import get_settings

_settings = get_settings()

if not _settings.asgi_app:
    sys.exit("ASGI_APP is not set: name the app to serve as module:attribute, e.g. shop.web:api")
wsgi_app = _settings.asgi_app
# Metrics: the workers write them to files in PROMETHEUS_MULTIPROC_DIR (systemd's RuntimeDirectory
# on the hosts), the master serves their sum on API_METRICS_BIND (vmkit.metrics_listener).
if _settings.api_metrics_bind and not metrics_listener.multiproc_dir():
    sys.exit("API_METRICS_BIND is set but PROMETHEUS_MULTIPROC_DIR is not: name the directory "
             "where the workers write their metrics, e.g. /run/api-gunicorn/metrics")
# uvicorn-worker's UvicornWorker, plus the kit's JSON access line for every app.
worker_class = "vmkit.worker.Worker"

# Under systemd socket activation (LISTEN_PID == our pid) gunicorn adopts the inherited sockets
# itself and ignores `bind`; a HUP or USR2 keeps them. `bind` matters for runs outside systemd.
bind = [_settings.api_bind]
backlog = _settings.api_backlog
workers = _settings.api_workers
timeout = _settings.api_timeout
graceful_timeout = _settings.api_graceful_timeout
keepalive = _settings.api_keepalive
max_requests = _settings.api_max_requests
max_requests_jitter = _settings.api_max_requests_jitter
forwarded_allow_ips = _settings.api_forwarded_allow_ips

# gunicorn >= 25 opens a control socket (for gunicornc) by default under $XDG_RUNTIME_DIR or
# ~/.gunicorn, neither writable in a hardened unit; it is placed explicitly or switched off.
if _settings.api_control_socket:
    control_socket = _settings.api_control_socket
else:
    control_socket_disable = True

# Workers touch a heartbeat file every few seconds; on a disk-backed /tmp that write can stall.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# One JSON object per line for gunicorn's own lines too. uvicorn's worker copies the handlers of
# gunicorn.error onto uvicorn.error and those of gunicorn.access onto uvicorn.access (both with
# propagate off). gunicorn.access gets no handler on purpose: uvicorn then skips its access lines,
# which have no duration, and vmkit.access.AccessLog writes one JSON line per request instead.
# That is also why gunicorn's `access_log_format` is not set: ASGI workers never use it.
_level = _settings.log_level.upper()
loglevel = _settings.log_level
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "vmkit.logs.JsonFormatter"}},
    "handlers": {
        "json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
    },
    "root": {"level": _level, "handlers": ["json"]},
    "loggers": {
        "gunicorn.error": {"level": _level, "handlers": ["json"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
}


# Worker ids: each worker gets the lowest id not held by a live worker of the current generation,
# so the live workers hold 0..N-1 after a crash, TTIN/TTOU, max_requests recycling or a HUP.
# During a HUP reload (or USR2) old and new workers briefly share ids: WORKER_ID is never a mutex.


def pre_fork(server, worker):
    worker_ids.assign_id(worker, server.WORKERS.values())


def post_fork(server, worker):
    # WORKER_ID is already in this child's environment (exported by an at-fork hook in
    # vmkit.worker_ids), so this line, like every later one of the worker, carries worker_id.
    server.log.info("worker started", extra={"worker_age": worker.age})


def child_exit(server, worker):
    # The id is free from here on: the arbiter has already dropped this worker from WORKERS.
    server.log.info(
        "worker exited", extra={"released_worker_id": worker.worker_id, "worker_pid": worker.pid}
    )
    if _settings.api_metrics_bind:
        # Marked dead (prometheus_client's mark_process_dead) and its counts kept, also after a
        # HUP, which replaces every worker without running on_starting again.
        metrics_listener.worker_exited(worker.pid)


# These two run once per master: a HUP re-reads this file but keeps the master and its listener
# thread, so a changed API_METRICS_BIND or PROMETHEUS_MULTIPROC_DIR takes a restart.


def on_starting(server):
    if _settings.api_metrics_bind:
        metrics_listener.reset_multiproc_dir(metrics_listener.multiproc_dir())


def when_ready(server):
    if _settings.api_metrics_bind:
        metrics_listener.serve_workers(_settings.api_metrics_bind, metrics_listener.multiproc_dir())


def on_reload(server):
    worker_ids.mark_retiring(server.WORKERS.values())


def nworkers_changed(server, new_value, old_value):
    if old_value is not None and new_value < old_value:
        worker_ids.retire_highest_ids_first(server.WORKERS.values(), new_value)
