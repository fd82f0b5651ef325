"""Every route through a real gunicorn (2 uvicorn workers) against a real, password-protected Redis."""

import socket
from collections.abc import Iterator

import httpx
import pytest

from support import Gunicorn, RedisServer, scheduler_process, wait_until

REDIS_PASSWORD = "s3cret-redis-pw"
APP_VERSION = "9.8.7-test"
CORS_ORIGIN = "https://app.example.test"
MAX_BODY = 256 * 1024
# Every request below is bounded by this; a hung worker fails the test instead of stalling it.
CLIENT_TIMEOUT = 10


@pytest.fixture(scope="module")
def redis(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), password=REDIS_PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(redis, tmp_path_factory) -> Iterator[Gunicorn]:
    server = Gunicorn(
        tmp_path_factory.mktemp("api") / "gunicorn.log",
        REDIS_URL=redis.url,
        SCHEDULER_JOBS="app.jobs:jobs",
        API_ENV="production",
        APP_VERSION=APP_VERSION,
        CORS_ORIGINS=f"{CORS_ORIGIN}, https://other.example.test",
        API_MAX_BODY_BYTES=str(MAX_BODY),
        REDIS_SOCKET_TIMEOUT="1",
        READY_HEARTBEAT_MAX_AGE="3",
    ).start()
    try:
        yield server.wait_serving()
    finally:
        server.stop()


# ---- /health -----------------------------------------------------------------------------------


def test_health_reports_version_worker_and_uvloop_httptools(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == APP_VERSION
    assert body["worker_id"] in (0, 1)
    assert isinstance(body["pid"], int)
    assert body["runtime"] == {"loop": "uvloop", "http": "httptools"}


def test_probes_answer_head_like_get_without_a_body(client):
    for path in ("/health", "/ready"):
        head, get = client.head(path), client.get(path)
        assert head.status_code == get.status_code, path
        assert head.content == b"" and head.headers["content-type"] == "application/json"
        assert int(head.headers["content-length"]) == len(get.content) or path == "/ready"


def test_both_workers_answer_with_their_own_id_and_pid(api):
    seen: dict[int, int] = {}

    def both_seen() -> bool:
        # A fresh connection per request lets the kernel hand it to either worker.
        body = httpx.get(f"{api.url}/health", timeout=CLIENT_TIMEOUT).json()
        seen[body["worker_id"]] = body["pid"]
        return len(seen) == 2

    wait_until(both_seen, 20, "both workers to answer /health", interval=0)
    assert set(seen) == {0, 1}
    assert set(seen.values()) == api.worker_pids()


# ---- /cache ------------------------------------------------------------------------------------


def test_cache_put_get_delete(client, redis):
    assert client.put("/cache/user:42", json={"value": "hello ✓", "ttl": 300}).json() == {
        "key": "user:42", "ttl": 300,
    }
    got = client.get("/cache/user:42")
    assert got.status_code == 200
    assert got.json()["value"] == "hello ✓"
    assert 0 < got.json()["ttl"] <= 300
    # Stored under the key prefix, with the expiry set in Redis itself.
    assert 0 < int(redis.command("TTL", "api:cache:user:42")) <= 300

    assert client.delete("/cache/user:42").status_code == 204
    assert client.get("/cache/user:42").status_code == 404
    assert client.delete("/cache/user:42").status_code == 404


def test_cache_without_ttl_persists_and_put_overwrites(client, redis):
    client.put("/cache/settings.v1", json={"value": "one", "ttl": 5})
    client.put("/cache/settings.v1", json={"value": "two"})
    assert client.get("/cache/settings.v1").json() == {"key": "settings.v1", "value": "two", "ttl": None}
    assert redis.command("TTL", "api:cache:settings.v1") == "-1"


def test_value_of_maximum_length_round_trips(client):
    value = "é" * 64 * 1024  # 128 KiB of UTF-8, under the body limit
    assert client.put("/cache/big", json={"value": value}).status_code == 200
    assert client.get("/cache/big").json()["value"] == value


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/cache/has%20space", 422),
        ("/cache/%FF%FE", 422),  # not UTF-8
        ("/cache/caf%C3%A9", 422),  # non-ASCII letter
        ("/cache/" + "k" * 129, 422),  # too long
        ("/cache/semi;colon", 422),
        ("/cache/slash%2Fx", 404),  # decodes to /cache/slash/x: no such route
    ],
)
def test_bad_keys_are_rejected(client, path, status):
    for method in ("GET", "PUT", "DELETE"):
        response = client.request(method, path, json={"value": "v"})
        assert response.status_code == status, (method, response.text)


@pytest.mark.parametrize(
    "body",
    [
        {"value": "v", "ttl": 0},
        {"value": "v", "ttl": -5},
        {"value": "v", "ttl": 30 * 24 * 3600 + 1},
        {"value": "v", "ttl": "60"},
        {"value": "v", "ttl": 1.5},
        {"value": "v", "ttl": True},
        {"value": 5},
        {"value": None},
        {"value": ["a"]},
        {"value": "bell\u0007"},
        {"value": "nul\u0000"},
        {"value": "x" * (64 * 1024 + 1)},
        {"value": "v", "unexpected": 1},
        {"ttl": 60},
        [],
        "just a string",
    ],
)
def test_bad_bodies_are_422(client, body):
    response = client.put("/cache/k", json=body)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_malformed_and_non_utf8_json_are_4xx(client):
    headers = {"content-type": "application/json"}
    # Malformed JSON is the kit's 400 (vmkit.bad_input), before FastAPI parses anything.
    assert client.put("/cache/k", content=b'{"value": "unterminated', headers=headers).status_code == 400
    assert client.put("/cache/k", content=b'{"value": "\xff\xfe"}', headers=headers).status_code == 400
    assert client.put("/cache/k", content=b"", headers=headers).status_code == 422
    # Without a JSON content type the body is not parsed as JSON at all.
    assert client.put("/cache/k", content=b'{"value": "v"}').status_code == 422


def test_oversized_bodies_are_413_before_being_read(client):
    huge = b'{"value": "' + b"x" * (MAX_BODY + 1) + b'"}'
    headers = {"content-type": "application/json"}
    assert client.put("/cache/k", content=huge, headers=headers).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        for start in range(0, len(huge), 64 * 1024):
            yield huge[start:start + 64 * 1024]

    assert client.put("/cache/k", content=chunks(), headers=headers).status_code == 413


def test_raw_invalid_request_lines_get_400_and_the_worker_lives_on(api, client):
    for request in (
        b"GET /cache/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello to a plain HTTP port\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", api.port), timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(request)
            status_line = sock.makefile("rb").readline()
        assert status_line.startswith(b"HTTP/1.1 400"), (request, status_line)
    for _ in range(4):
        assert client.get("/health").status_code == 200


# ---- /large-response ---------------------------------------------------------------------------


def test_large_response_is_about_the_requested_size(client):
    default = client.get("/large-response", headers={"accept-encoding": "identity"})
    assert default.status_code == 200
    assert 500 * 1024 <= len(default.content) <= 501 * 1024
    assert len(default.json()["items"]) > 1000

    small = client.get("/large-response", params={"kb": 3}, headers={"accept-encoding": "identity"})
    assert 3 * 1024 <= len(small.content) <= 4 * 1024


def test_responses_are_not_compressed_by_the_app(client):
    # nginx compresses large bodies (nginx_gzip_*); the app spends no Python time on it.
    response = client.get("/large-response", params={"kb": 64}, headers={"accept-encoding": "gzip"})
    assert response.status_code == 200 and "content-encoding" not in response.headers


@pytest.mark.parametrize("kb", ["0", "-1", "4097", "abc", "1.5", ""])
def test_bad_kb_is_422(client, kb):
    assert client.get("/large-response", params={"kb": kb}).status_code == 422


# ---- CORS --------------------------------------------------------------------------------------


def test_cors_allows_configured_origins_only(client):
    preflight = client.options(
        "/cache/k",
        headers={"origin": CORS_ORIGIN, "access-control-request-method": "PUT",
                 "access-control-request-headers": "content-type"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "PUT" in preflight.headers["access-control-allow-methods"]

    simple = client.get("/health", headers={"origin": CORS_ORIGIN})
    assert simple.headers["access-control-allow-origin"] == CORS_ORIGIN
    stranger = client.get("/health", headers={"origin": "https://evil.example.test"})
    assert "access-control-allow-origin" not in stranger.headers


def test_production_serves_no_interactive_docs(client):
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(path).status_code == 404


# ---- /ready and /jobs with the real scheduler daemon ---------------------------------------------


def test_ready_and_jobs_follow_the_scheduler(client, redis, tmp_path):
    not_ready = client.get("/ready")
    assert not_ready.status_code == 503
    checks = not_ready.json()["checks"]
    assert checks["redis"]["ok"] is True
    assert checks["scheduler"]["ok"] is False
    assert client.get("/jobs").json() == {"leader": None, "jobs": []}

    scheduler = scheduler_process(
        tmp_path / "scheduler.log", REDIS_URL=redis.url,
        SCHEDULER_HEARTBEAT_SECONDS="0.5", SCHEDULER_LEASE_TTL="2", SCHEDULER_DRAIN_TIMEOUT="2",
    ).start()
    try:
        ready = wait_until(lambda: (r := client.get("/ready")).status_code == 200 and r, 20,
                           "/ready to turn 200 with the scheduler running")
        body = ready.json()
        assert body["status"] == "ready"
        assert body["checks"]["scheduler"]["leader"].endswith(f":{scheduler.pid}")
        assert 0 <= body["checks"]["scheduler"]["heartbeat_age_seconds"] <= 3

        def heartbeat_job() -> dict | None:
            listing = client.get("/jobs").json()
            job = next((job for job in listing["jobs"] if job["id"] == "heartbeat"), None)
            return job and job["run_count"] and (listing, job)

        listing, heartbeat = wait_until(heartbeat_job, 20, "/jobs to show the heartbeat job run")
        assert listing["leader"]["id"] == body["checks"]["scheduler"]["leader"]
        assert {job["id"] for job in listing["jobs"]} == {"heartbeat", "example"}
        assert {"trigger", "next_run", "last_run", "last_outcome", "run_count", "recent_runs"} <= heartbeat.keys()
        assert heartbeat["recent_runs"][0]["leader"] == listing["leader"]["id"]
        assert heartbeat["last_outcome"] in ("ok", "running")
    finally:
        assert scheduler.stop() == 0

    stale = wait_until(lambda: (r := client.get("/ready")).status_code == 503 and r, 15,
                       "/ready to turn 503 once heartbeats stop")
    assert stale.json()["checks"]["scheduler"]["ok"] is False


# ---- Redis outage ------------------------------------------------------------------------------


def test_redis_outage_gives_503_then_recovers_without_restart(api, client, redis):
    assert client.put("/cache/outage", json={"value": "before"}).status_code == 200
    pids_before = api.worker_pids()
    redis.stop()
    try:
        for _ in range(3):  # both workers, pooled connections now dead
            for response in (client.get("/cache/outage"), client.put("/cache/outage", json={"value": "x"}),
                             client.delete("/cache/outage"), client.get("/jobs")):
                assert response.status_code == 503, response.text
                assert response.json() == {"detail": "redis unavailable"}
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"]["ok"] is False
        assert client.get("/health").status_code == 200
    finally:
        redis.start()
    wait_until(lambda: client.get("/cache/outage").status_code == 404, 15,
               "the cache to answer again after Redis came back (data was not persisted)")
    assert client.put("/cache/outage", json={"value": "after"}).status_code == 200
    assert client.get("/cache/outage").json()["value"] == "after"
    assert api.worker_pids() == pids_before


# ---- logs --------------------------------------------------------------------------------------


def test_logs_are_json_with_worker_ids_and_one_access_line_per_request(api, client):
    marker = "/cache/log-marker-7731"
    client.get(marker, headers={"x-request-id": "req-7731"})
    lines = wait_until(
        lambda: [line for line in api.log_lines() if line.get("path") == marker], 10,
        "the access line of the marker request",
    )
    assert len(lines) == 1  # uvicorn's own access line is switched off
    access = lines[0]
    assert access["logger"] == "vmkit.access"
    assert access["request_id"] == "req-7731"
    assert access["method"] == "GET"
    assert access["status"] == 404
    assert access["duration_ms"] >= 0
    assert access["worker_id"] in (0, 1)

    all_lines = api.log_lines()
    workers = api.worker_pids()
    assert all("worker_id" in line for line in all_lines if line["pid"] in workers)
    runtime = [line for line in all_lines if line["msg"] == "runtime"]
    assert {line["worker_id"] for line in runtime} >= {0, 1}
    assert all(line["level"] == "info" for line in runtime)  # production: no fallback error


def test_logs_never_contain_the_redis_password_or_request_bodies(api, client):
    client.put("/cache/secretive", json={"value": "body-canary-5521"})
    client.get("/cache/secretive", params={"token": "query-canary-8812"})
    wait_until(lambda: "/cache/secretive" in api.output(), 10, "the access lines")
    output = api.output()
    assert REDIS_PASSWORD not in output
    assert "body-canary-5521" not in output
    assert "query-canary-8812" not in output
