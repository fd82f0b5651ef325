"""The per-request cost of vmkit.request_metrics, in-process, in seconds of this CPU:

    .venv/bin/python bench/request_metrics.py

The same ASGI app is called 20 000 times with a fake scope, with and without the middleware, in
multiprocess mode as on the hosts (a throw-away PROMETHEUS_MULTIPROC_DIR). A bare app isolates the
middleware; a FastAPI route shows it beside what a real request costs. Best of five rounds each.
Not a test: it asserts nothing (`make bench` measures the deployed stack with metrics on and off).
"""

import asyncio
import os
import tempfile
import time

# Before prometheus_client is imported: it picks its multiprocess mode then. Removed at exit.
_DIRECTORY = tempfile.TemporaryDirectory(prefix="bench-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _DIRECTORY.name

from fastapi import FastAPI  # noqa: E402

from vmkit.request_metrics import RequestMetrics  # noqa: E402

REQUESTS = 20_000
ROUNDS = 5

api = FastAPI()


@api.get("/notes/{note_id}")
async def note(note_id: int) -> dict:
    return {"id": note_id}


class Route:
    path_format = "/notes/{note_id}"


ROUTE = Route()
START = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"{}"}


async def bare(scope, receive, send):
    scope["route"] = ROUTE
    await send(START)
    await send(BODY)


async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message):
    pass


def scope() -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": "/notes/3", "raw_path": b"/notes/3", "root_path": "",
            "query_string": b"", "headers": [], "client": ("127.0.0.1", 1), "server": ("t", 80)}


async def microseconds_per_request(app) -> float:
    started = time.perf_counter()
    for _ in range(REQUESTS):
        await app(scope(), receive, send)
    return (time.perf_counter() - started) / REQUESTS * 1e6


async def main() -> None:
    for name, app in (("bare ASGI app", bare), ("FastAPI route", api)):
        instrumented = RequestMetrics(app)
        await microseconds_per_request(instrumented)  # warm-up: the labelled series exist
        # Alternating rounds, so that the machine's other load falls on both sides alike.
        without = with_metrics = float("inf")
        for _ in range(ROUNDS):
            without = min(without, await microseconds_per_request(app))
            with_metrics = min(with_metrics, await microseconds_per_request(instrumented))
        print(f"{name}: {without:.1f} µs without metrics, {with_metrics:.1f} µs with "
              f"({with_metrics - without:+.1f} µs per request)")


if __name__ == "__main__":
    asyncio.run(main())
