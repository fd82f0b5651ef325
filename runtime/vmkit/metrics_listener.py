"""The private listeners Prometheus scrapes: one in the gunicorn master for every worker's metrics
(API_METRICS_BIND), one in the scheduler daemon (SCHEDULER_METRICS_BIND). Neither is reachable
through nginx: nginx proxies only to the app's socket, and the app has no metrics route.

The workers write their metrics to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode) and the master sums them up when scraped. The master serves them, not a
worker, so that the target is down exactly when the API is: a worker would take the listener with
it on every restart, and N workers cannot share one port and each answer for all of them.
"""

import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger("vmkit.metrics")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def split_bind(bind: str) -> tuple[str, int]:
    """`host:port` (the settings' BIND_ADDRESS, IPv6 in brackets) as an address and a port."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def serve(bind: str, registry: CollectorRegistry) -> None:
    """Serves `registry` on `bind` from a daemon thread of this process.

    A bind that fails is logged, not raised: the service itself must keep running, and the scrape
    target being down says the rest."""
    host, port = split_bind(bind)
    try:
        server, _ = start_http_server(port, host, registry=registry)
    except OSError as error:
        log.error("metrics listener not started", extra={"bind": bind, "error": str(error)})
        return
    # A forked child (a gunicorn worker) would otherwise hold the listening socket open with no
    # thread to answer it: connections would hang instead of being refused once the master is
    # gone, and a new master could not bind the port while old workers still drain.
    os.register_at_fork(after_in_child=server.socket.close)
    log.info("metrics listener started", extra={"bind": bind})


def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_DIR_ENV)
    return Path(value) if value else None


def reset_multiproc_dir(directory: Path) -> None:
    """Creates the directory or empties it of a previous run's files: the counts of workers that
    no longer exist would otherwise be summed into the new ones' forever. systemd empties its
    RuntimeDirectory on start anyway; this covers runs outside systemd."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def serve_workers(bind: str, directory: Path) -> None:
    """In the gunicorn master: the sum over every worker's files, live or dead, on each scrape."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    serve(bind, registry)
