"""Long-lived work under the kit's gunicorn (issue #19): streams marked for nginx to pass on
unbuffered, the example app's live counter over SSE and WebSocket, an SSE stream that ends when
its worker drains, and the example's background consumer with a real redis-server."""

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from support import Gunicorn, Process, base_env, wait_until


@pytest.mark.parametrize(("kind", "media_type"), [
    ("sse", "text/event-stream; charset=utf-8"), ("ndjson", "application/x-ndjson"), ("json", "application/json")])
def test_streams_tell_nginx_not_to_buffer_them(shop, kind, media_type):
    """SSE and NDJSON of an app that knows nothing of nginx get the header from the kit; a JSON
    stream has it because the app set it itself (once, not twice)."""
    with shop.client() as client:
        response = client.get(f"/stream/{kind}", params={"count": 3, "interval": 0})
    assert response.headers["content-type"] == media_type
    assert response.headers.get_list("x-accel-buffering") == ["no"]
    assert response.text.count("0") >= 1 and len(response.text.strip().splitlines()) >= 3


def test_other_responses_stay_buffered(shop):
    with shop.client() as client:
        assert "x-accel-buffering" not in client.get("/prices/apple").headers
        assert "x-accel-buffering" not in client.get("/healthz").headers


@pytest.fixture
def example(tmp_path, redis_server) -> Iterator[Gunicorn]:
    server = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=redis_server.url, SCHEDULER_JOBS="").start()
    try:
        yield server.wait_serving()
    finally:
        server.stop()


def sse_events(lines: Iterator[str]) -> Iterator[dict]:
    """The `value` events of a text/event-stream, parsed."""
    event = {}
    for line in lines:
        if line.startswith(("event:", "data:")):
            name, _, value = line.partition(":")
            event[name] = value.strip()
        elif not line and "data" in event:
            yield {"event": event.get("event"), **json.loads(event["data"])}
            event = {}


def test_the_counter_streams_its_changes_and_ends_when_the_worker_drains(example):
    name = "live-sse"
    with httpx.Client(base_url=example.url, timeout=10) as client:
        with client.stream("GET", f"/counters/{name}/events") as stream:
            assert stream.headers["x-accel-buffering"] == "no"
            events = sse_events(stream.iter_lines())
            assert next(events) == {"event": "value", "name": name, "value": 0}
            client.post(f"/counters/{name}")
            client.post(f"/counters/{name}")
            seen = [next(events)["value"]]
            while seen[-1] < 2:
                seen.append(next(events)["value"])
            assert seen[-1] == 2
            # A reload drains every worker: the endless stream ends now, not after the graceful
            # timeout (10 s here), and its client reconnects to a new worker.
            started = time.monotonic()
            example.signal(signal.SIGHUP)
            assert list(events) == []
            assert time.monotonic() - started < 5


def test_the_counter_over_a_websocket(example):
    name = "live-ws"
    with connect(f"ws://127.0.0.1:{example.port}/counters/{name}/live", open_timeout=10) as websocket:
        assert json.loads(websocket.recv(timeout=10)) == {"name": name, "value": 0}
        websocket.send("incr")
        assert json.loads(websocket.recv(timeout=10)) == {"name": name, "value": 1}
        httpx.post(f"{example.url}/counters/{name}", timeout=10)
        assert json.loads(websocket.recv(timeout=10)) == {"name": name, "value": 2}


def consumer(tmp_path, redis_server) -> Process:
    return Process([sys.executable, "-m", "app.consumer"], base_env(REDIS_URL=redis_server.url),
                   tmp_path / "consumer.log")


def test_the_consumer_does_what_the_post_queued_and_stops_cleanly(example, redis_server, tmp_path):
    worker = consumer(tmp_path, redis_server).start()
    try:
        with httpx.Client(base_url=example.url, timeout=10) as client:
            queued = client.post("/tasks", json={"text": "count these four words"})
            assert queued.status_code == 202 and queued.json()["status"] == "queued"
            task = f"/tasks/{queued.json()['id']}"
            done = wait_until(lambda: (r := client.get(task).json())["status"] == "done" and r, 10,
                              "the consumer to do the task")
            assert done == {"id": queued.json()["id"], "status": "done", "words": "4", "chars": "22"}
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
        assert [line["msg"] for line in worker.log_lines()][-1] == "consumer stopped"
    finally:
        worker.stop()


def test_a_task_a_killed_consumer_had_taken_is_done_after_its_restart(example, redis_server, tmp_path):
    with httpx.Client(base_url=example.url, timeout=10) as client:
        task_id = client.post("/tasks", json={"text": "one two"}).json()["id"]
        # As if a consumer of this host had taken it and been killed before finishing it.
        processing = redis_server.command("KEYS", "api:tasks:processing:*")
        assert processing == ""
        hostname = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
        redis_server.command("LMOVE", "api:tasks:queue", f"api:tasks:processing:{hostname}", "RIGHT", "LEFT")
        assert client.get(f"/tasks/{task_id}").json()["status"] == "queued"
        worker = consumer(tmp_path, redis_server).start()
        try:
            wait_until(lambda: client.get(f"/tasks/{task_id}").json()["status"] == "done", 10,
                       "the task to be taken up again")
        finally:
            worker.stop()
