"""Workers stopping under load, straight to gunicorn (no nginx to retry anything): a HUP reload
and max_requests recycling while keep-alive clients send GETs and non-idempotent POSTs. The kit's
draining protocol (vmkit.draining) answers every request that was sent: none meets a reset or a
closed connection, and the counter the POSTs increment equals the number of 2xx answers."""

import os
import signal
import threading
import time

import httpx
import pytest

from support import Gunicorn, RedisServer

CLIENTS = 8
SECONDS = 12


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def hammer(url: str, stop: threading.Event, tally: dict, lock: threading.Lock, index: int) -> None:
    """One keep-alive client: GET /health and POST /counters/drain in turn until told to stop."""
    with httpx.Client(base_url=url, timeout=30) as client:
        count = 0
        while not stop.is_set() and count < 100_000:
            count += 1
            post = (count + index) % 2 == 0
            try:
                response = client.post("/counters/drain") if post else client.get("/health")
                outcome = "post_ok" if post and response.status_code == 200 else (
                    "get_ok" if response.status_code == 200 else f"status {response.status_code}")
            except httpx.HTTPError as error:
                outcome = f"{type(error).__name__}: {error}"
            with lock:
                tally[outcome] = tally.get(outcome, 0) + 1


def test_reload_and_recycling_under_load_answer_every_request(tmp_path, redis):
    api = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=redis.url, API_MAX_REQUESTS="300",
                   API_MAX_REQUESTS_JITTER="100").start()
    api.wait_serving()
    tally: dict[str, int] = {}
    lock, stop = threading.Lock(), threading.Event()
    threads = [threading.Thread(target=hammer, args=(api.url, stop, tally, lock, i)) for i in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        started = time.monotonic()
        for moment in (3, 7):
            time.sleep(max(0, started + moment - time.monotonic()))
            os.kill(api.pid, signal.SIGHUP)
        time.sleep(max(0, started + SECONDS - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        api.stop()
    recycled = sum(1 for line in api.log_lines() if line.get("msg") == "worker started") - 2
    failures = {outcome: n for outcome, n in tally.items() if not outcome.endswith("_ok")}
    print(f"{sum(tally.values())} requests, {recycled} workers replaced, outcomes {tally}")
    assert recycled >= 6, "too few worker replacements to show anything"
    assert failures == {}
    assert int(redis.command("GET", "api:counters:drain")) == tally["post_ok"]
