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
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

log = logging.getLogger("vmkit.metrics")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The file types of the API's counts (request durations); gauges live and die with their worker.
FOLDED_KINDS = ("counter", "histogram")


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


class WorkerFiles(Collector):
    """The sum over the workers' files, for the gunicorn master.

    A worker that exits (max_requests recycling replaces one every few thousand requests) leaves
    a 64 KB file per metric type in a tmpfs, which every scrape would read again: its counts are
    folded into one archive file per type instead, and its file is removed. A lock keeps a scrape
    from seeing a count both in the archive and in the file it came from."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files = MultiProcessCollector(None, path=str(directory))
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            return self._files.collect()

    def retire(self, pid: int) -> None:
        with self._lock:
            # Its live gauges (in progress, worker info) go; its counts stay, in the archive.
            mark_process_dead(pid, str(self.directory))
            for kind in FOLDED_KINDS:
                dead = self.directory / f"{kind}_{pid}.db"
                if dead.exists():
                    _fold(dead, self.directory / f"{kind}_archive.db")
                    dead.unlink()


def _fold(source: Path, archive: Path) -> None:
    """Adds every value of `source` to the same key of `archive` (buckets are stored per bucket,
    not cumulated, so adding is right for histograms too)."""
    totals = MmapedDict(str(archive))
    try:
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(source)):
            total, _ = totals.read_value(key)
            totals.write_value(key, total + value, timestamp)
    finally:
        totals.close()


_workers: WorkerFiles | None = None


def serve_workers(bind: str, directory: Path) -> None:
    """In the gunicorn master, once: the workers' metrics on `bind`."""
    global _workers
    _workers = WorkerFiles(directory)
    registry = CollectorRegistry()
    registry.register(_workers)
    serve(bind, registry)


def worker_exited(pid: int) -> None:
    """In the gunicorn master, for every worker it reaps (also those a HUP replaced)."""
    _workers.retire(pid)
