"""The API's metrics with real gunicorn: what the workers count, served by the master on
API_METRICS_BIND, kept across a HUP, and never on the public port."""

import os
import signal
import subprocess
from pathlib import Path

import httpx

from support import (
    EXAMPLE_APP,
    REPO,
    VENV_BIN,
    Gunicorn,
    base_env,
    free_port,
    samples_of,
    scrape,
    wait_until,
)

COUNT = "api_request_duration_seconds_count"


def requests_by(samples, route: str, method: str = "GET") -> dict[str, float]:
    """status -> requests counted for one route and method."""
    return {dict(labels)["status"]: value for labels, value in samples_of(samples, COUNT).items()
            if dict(labels)["route"] == route and dict(labels)["method"] == method}


def live_workers(samples) -> dict[int, str]:
    """pid -> WORKER_ID of each worker the master reports live."""
    return {int(dict(labels)["pid"]): dict(labels)["worker_id"]
            for labels, value in samples_of(samples, "api_worker_info").items() if value == 1}


def holders_of_listener(port: int) -> set[int]:
    """pids holding the socket that listens on 127.0.0.1:port, from /proc."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            inodes.add(f"socket:[{fields[9]}]")
    holders = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) in inodes:
                holders.add(int(fd.parts[2]))
        except OSError:
            continue  # a process or descriptor that went away meanwhile
    return holders


def in_progress(samples) -> float:
    return samples[("api_requests_in_progress", frozenset())]


def test_counts_by_route_template_and_status_served_by_the_master_and_kept_across_hup(
        tmp_path, redis_server):
    metrics_port = free_port()
    directory = tmp_path / "metrics"
    directory.mkdir()
    # A file of a previous run: its counts must not be summed into this one's.
    stale = directory / "counter_1.db"
    stale.write_bytes(b"\0" * 16)
    server = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=redis_server.url,
                      API_METRICS_BIND=f"127.0.0.1:{metrics_port}", API_MAX_BODY_BYTES="1024",
                      PROMETHEUS_MULTIPROC_DIR=str(directory)).start()
    try:
        server.wait_serving()
        assert not stale.exists()
        with server.client() as client:
            assert client.put("/cache/present", json={"value": "v"}).status_code == 200
            assert client.get("/cache/present").status_code == 200
            assert client.get("/cache/present").status_code == 200
            assert client.get("/cache/absent").status_code == 404
            assert client.get("/no/such/route").status_code == 404
            # Metrics are the private listener's only: the public port has no such route.
            assert client.get("/metrics").status_code == 404
            assert client.post("/counters/c", content=b"x" * 2048).status_code == 413

            def both_workers():
                samples = scrape(metrics_port)
                return samples if sorted(live_workers(samples).values()) == ["0", "1"] else None

            samples = wait_until(both_workers, 30, "both workers' ids on the metrics listener")
            assert set(live_workers(samples)) == server.worker_pids()
            # The master alone holds the listener: the workers closed their copy at the fork.
            assert holders_of_listener(metrics_port) == {server.pid}
            assert requests_by(samples, "/cache/{key}") == {"200": 2, "404": 1}
            assert requests_by(samples, "/cache/{key}", "PUT") == {"200": 1}
            assert requests_by(samples, "<unmatched>") == {"404": 2}
            # BodyLimit answers from the Content-Length, before any route is chosen.
            assert requests_by(samples, "<unmatched>", "POST") == {"413": 1}
            assert all("/cache/present" not in dict(labels)["route"]
                       for labels in samples_of(samples, COUNT))
            assert in_progress(samples) == 0

            # A stream is in progress until its body ends.
            with client.stream("GET", "/counters/c/events") as stream:
                assert stream.status_code == 200
                lines = stream.iter_lines()  # kept: a dropped iterator closes the stream
                assert next(lines).startswith("retry:")
                assert in_progress(scrape(metrics_port)) == 1
            wait_until(lambda: in_progress(scrape(metrics_port)) == 0, 10,
                       "the stream to end in the in-progress gauge")

            # A HUP replaces every worker: the old ones are marked dead, their counts stay.
            old = set(live_workers(samples))
            server.signal(signal.SIGHUP)

            def replaced():
                samples = scrape(metrics_port)
                live = live_workers(samples)
                done = len(live) == 2 and not old & live.keys() and set(live) == server.worker_pids()
                return samples if done else None

            samples = wait_until(replaced, 30, "the new workers alone on the metrics listener")
            assert sorted(live_workers(samples).values()) == ["0", "1"]
            assert requests_by(samples, "/cache/{key}") == {"200": 2, "404": 1}
            # No file of an exited worker is left: its counts went into one archive per type.
            assert not {path.name for path in directory.iterdir()
                        if any(path.name.endswith(f"_{pid}.db") for pid in old)}
            assert (directory / "histogram_archive.db").exists()
            assert client.get("/cache/present").status_code == 200
            assert requests_by(scrape(metrics_port), "/cache/{key}")["200"] == 3
        assert server.stop() == 0
        assert scrape(metrics_port) == {}
    finally:
        server.stop()


def test_without_api_metrics_bind_no_metrics_and_no_directory(tmp_path, redis_server):
    directory = tmp_path / "metrics"
    server = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=redis_server.url,
                      PROMETHEUS_MULTIPROC_DIR=str(directory)).start()
    try:
        server.wait_serving()
        assert httpx.get(f"{server.url}/cache/k", timeout=10).status_code == 404
        assert not directory.exists()
    finally:
        server.stop()


def test_api_metrics_bind_without_a_directory_stops_gunicorn_saying_so():
    env = base_env(ASGI_APP=EXAMPLE_APP, API_BIND=f"127.0.0.1:{free_port()}",
                   API_METRICS_BIND=f"127.0.0.1:{free_port()}")
    result = subprocess.run([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "API_METRICS_BIND is set but PROMETHEUS_MULTIPROC_DIR is not" in result.stderr
