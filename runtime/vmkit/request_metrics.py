"""Request metrics of every worker, for any app (the kit's worker adds them where API_METRICS_BIND
is set). The values go to files in PROMETHEUS_MULTIPROC_DIR, which the gunicorn master serves
(vmkit.metrics_listener); docs/metrics.md lists them.

Imported only where metrics are on: importing it creates the in-progress gauge's file.

Per request: one histogram observation and the in-progress gauge up and down, with the labelled
child of the histogram looked up in a dict (prometheus_client's `.labels()` checks and locks on
every call, which costs about as much as the observation itself).

Labels stay bounded whatever clients send: `route` is the template of the route that handled the
request (`/notes/{note_id}`), never the raw path, and UNMATCHED where no route did: a 404 of the
router, and what the kit answers before routing (a 413 by Content-Length, an idempotent replay or
conflict); a method outside METHODS is OTHER. An app mounted below a path (`app.mount("/v1",
sub_app)`) reports its own templates, without the mount's prefix.

The duration runs to the response's headers, not to the end of its body: a stream (SSE, a long
download) would otherwise turn every latency quantile of its route into the stream's lifetime.
The in-progress gauge does count a request until its body is complete.
"""

import os
import time

from prometheus_client import Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmkit.worker_ids import ENV_VAR as WORKER_ID_ENV

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "OTHER"

REQUEST_DURATION = Histogram(
    "api_request_duration_seconds",
    "Seconds from receiving a request to sending its response headers; its _count is the number "
    "of requests",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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


class RequestMetrics:
    """Pure ASGI (no BaseHTTPMiddleware, no task per request). Lifespan and WebSocket scopes pass
    untouched. A request whose app raises before answering counts as a 500, as the server will
    answer it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._observers: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        answered = 0.0
        status = 500

        async def send_and_time(message: Message) -> None:
            nonlocal answered, status
            if message["type"] == "http.response.start":
                answered = time.perf_counter()
                status = message["status"]
            await send(message)

        IN_PROGRESS.inc()
        try:
            await self.app(scope, receive, send_and_time)
        finally:
            IN_PROGRESS.dec()
            self._observer(scope, status).observe((answered or time.perf_counter()) - started)

    def _observer(self, scope: Scope, status: int) -> Histogram:
        method = scope["method"]
        key = (route_template(scope), method if method in METHODS else OTHER, status)
        observer = self._observers.get(key)
        if observer is None:
            observer = self._observers[key] = REQUEST_DURATION.labels(*key[:2], str(status))
        return observer


def instrument(app: ASGIApp) -> RequestMetrics:
    """Wraps a worker's app, and marks the worker live under its WORKER_ID (vmkit.worker_ids)."""
    WORKER_INFO.labels(os.environ.get(WORKER_ID_ENV, "")).set(1)
    return RequestMetrics(app)
