"""Request metrics of every worker, for any app (the kit's worker adds them where API_METRICS_BIND
is set). The values go to files in PROMETHEUS_MULTIPROC_DIR, which the gunicorn master serves
(vmkit.metrics_listener); docs/metrics.md lists them.

Imported only where metrics are on: importing it creates the in-progress gauge's file.

A request only counts into this worker's own tally (a bucket found by bisection, a sum, the
in-progress count: plain Python numbers); the tally goes to the files at most FLUSH_SECONDS after
it changed, and when the worker exits (`flush`, from gunicorn's worker_exit hook). Writing each
request to the files instead (prometheus_client's observe() and inc(): a lock and an mmap write per
value, four per request) cost 5-14 µs a request, a tenth of the stack's throughput. A scrape sees
counts at most FLUSH_SECONDS old; a worker killed outright loses at most that much of its counts.

Labels stay bounded whatever clients send: `route` is the template of the route that handled the
request (`/notes/{note_id}`), never the raw path, and UNMATCHED where no route did: a 404 of the
router, and what the kit answers before routing (a 413 by Content-Length, an idempotent replay or
conflict); a method outside METHODS is OTHER. An app mounted below a path (`app.mount("/v1",
sub_app)`) reports its own templates, without the mount's prefix.

The duration runs to the response's headers, not to the end of its body: a stream (SSE, a long
download) would otherwise turn every latency quantile of its route into the stream's lifetime.
The in-progress gauge does count a request until its body is complete.
"""

import asyncio
import os
import time
from bisect import bisect_left

from prometheus_client import Gauge, Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

from vmkit.asgi import HttpMiddleware, ResponseWatch
from vmkit.worker_ids import ENV_VAR as WORKER_ID_ENV

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "OTHER"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Longest a change waits in a worker's tally before the files (and so a scrape) show it.
FLUSH_SECONDS = 1.0

REQUEST_DURATION = Histogram(
    "api_request_duration_seconds",
    "Seconds from receiving a request to sending its response headers; its _count is the number "
    "of requests",
    ["route", "method", "status"],
    buckets=BUCKETS,
)
IN_PROGRESS = Gauge(
    "api_requests_in_progress",
    "Requests being served, over the live workers",
    multiprocess_mode="livesum",
)
WORKER_INFO = Gauge(
    "api_worker_info",
    "1 for each live worker, labelled with its WORKER_ID (and, by the multiprocess mode, its pid)",
    ["worker_id"],
    multiprocess_mode="liveall",
)


def route_template(scope: Scope) -> str:
    """The `route` label: the template of the route Starlette's router left in scope["route"].

    FastAPI keeps the routes of an included router as they were declared, without the include's
    prefix, and puts the full template in its own part of the scope; it is read from there where
    present (tests/unit/test_request_metrics.py fails if a FastAPI upgrade moves it)."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    context = scope.get("fastapi", {}).get("effective_route_context")
    return getattr(context, "path_format", None) or getattr(route, "path_format", UNMATCHED)


class Tally:
    """This worker's requests since the last flush: per (route, method, status), a count per
    bucket of BUCKETS (and one above them) followed by the sum of their durations."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], list[float]] = {}
        self.in_progress = 0
        self._flush_pending = False

    def add(self, key: tuple[str, str, int], seconds: float) -> None:
        counts = self.requests.get(key)
        if counts is None:
            counts = self.requests[key] = [0] * (len(BUCKETS) + 2)
        counts[bisect_left(BUCKETS, seconds)] += 1
        counts[-1] += seconds
        self.changed()

    def changed(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Adds the tally to the files, as the same observations one by one would have."""
        self._flush_pending = False
        requests, self.requests = self.requests, {}
        for (route, method, status), counts in requests.items():
            histogram = REQUEST_DURATION.labels(route, method, str(status))
            # prometheus_client has no batch observe(): its per-bucket values are added to directly
            # (tests/unit/test_request_metrics.py compares the result with observe()).
            for bucket, count in zip(histogram._buckets, counts[:-1], strict=True):
                if count:
                    bucket.inc(count)
            histogram._sum.inc(counts[-1])
        IN_PROGRESS.set(self.in_progress)


_tally = Tally()


def flush() -> None:
    """Writes what this worker counted and has not written yet (its exit, gunicorn's worker_exit)."""
    _tally.flush()


class RequestMetrics(HttpMiddleware):
    """A request whose app raises before answering counts as a 500, as the server will answer it."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        response = ResponseWatch(send)
        _tally.in_progress += 1
        _tally.changed()
        try:
            await self.app(scope, receive, response)
        finally:
            _tally.in_progress -= 1
            method = scope["method"]
            _tally.add((route_template(scope), method if method in METHODS else OTHER, response.status),
                       (response.answered or time.perf_counter()) - started)


def instrument(app: ASGIApp) -> RequestMetrics:
    """Wraps a worker's app, and marks the worker live under its WORKER_ID (vmkit.worker_ids)."""
    WORKER_INFO.labels(os.environ.get(WORKER_ID_ENV, "")).set(1)
    return RequestMetrics(app)
