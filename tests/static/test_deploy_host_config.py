"""The rendered host configuration other than nginx and the units: the nftables rules (checked by
nft without loading them), the Redis configuration (a real redis-server runs it) and api.env."""

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

from deploy_static import REDIS_ADMIN_PASSWORD, REDIS_PASSWORD, REDIS_SCHEDULER_PASSWORD, env_file, render, run, tool
from support import Gunicorn, free_port, scheduler_process, stop_process, wait_until


def nft_check(path) -> str:
    result = run(tool("nft"), "-c", "-f", path)
    return "" if result.returncode == 0 else result.stderr or f"exit {result.returncode}"


def test_nftables_rules_are_valid_and_open_only_ssh_http_https(rendered):
    assert nft_check(rendered.root / "nftables.conf") == ""
    rules = rendered.text("nftables.conf")
    assert "policy drop;" in rules
    assert "tcp dport { 22, 80, 443 } accept" in rules


def test_nft_check_reports_broken_rules(rendered, tmp_path):
    broken = tmp_path / "nftables.conf"
    broken.write_text(rendered.text("nftables.conf").replace("accept", "acept", 1))
    assert nft_check(broken) != ""


def redis_cli(port: int, user: str | None, password: str | None, *args: str) -> str:
    """One command through redis-cli as `user` (None: the default user); output and errors."""
    cli = [tool("redis-cli"), "-p", str(port), "--no-auth-warning"]
    if user:
        cli += ["--user", user, "--pass", password]
    result = subprocess.run(cli + list(args), capture_output=True, text=True, timeout=10)
    return (result.stdout + result.stderr).strip()


@contextmanager
def running_redis(config, tmp_path, *overrides: str) -> Iterator[int]:
    """redis-server running a rendered config; yields its port."""
    port = free_port()
    log = tmp_path / f"redis-{port}.log"
    # The rendered file first (so it is parsed as on the host), then only what differs here.
    proc = subprocess.Popen(
        [tool("redis-server"), config, "--port", str(port), "--dir", tmp_path,
         "--pidfile", tmp_path / f"redis-{port}.pid", "--logfile", log, "--daemonize", "no", *overrides],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def answers() -> bool:
            assert proc.poll() is None, log.read_text() if log.exists() else "redis-server exited"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(answers, 10, "redis-server with the rendered configuration")
        yield port
    finally:
        stop_process(proc)


@pytest.fixture
def rendered_redis(rendered, tmp_path) -> Iterator[int]:
    """The data Redis (redis.conf)."""
    with running_redis(rendered.root / "redis.conf", tmp_path) as port:
        yield port


@pytest.fixture
def rendered_cache_redis(rendered, tmp_path) -> Iterator[int]:
    """The cache Redis (redis-cache.conf)."""
    with running_redis(rendered.root / "redis-cache.conf", tmp_path) as port:
        yield port


def test_redis_runs_the_rendered_configuration(rendered_redis):
    port = rendered_redis
    # No password-less access: the default user is off ...
    assert "NOAUTH" in redis_cli(port, None, None, "PING")
    # ... and the operators' admin user sees the rendered settings in force.
    admin = ("admin", REDIS_ADMIN_PASSWORD)
    # The data Redis never evicts, and writes every change to its append-only file.
    assert redis_cli(port, *admin, "CONFIG", "GET", "maxmemory-policy").split() == ["maxmemory-policy", "noeviction"]
    assert redis_cli(port, *admin, "CONFIG", "GET", "appendonly").split() == ["appendonly", "yes"]
    assert redis_cli(port, *admin, "CONFIG", "GET", "appendfsync").split() == ["appendfsync", "everysec"]
    assert redis_cli(port, *admin, "CONFIG", "GET", "maxmemory").split() == ["maxmemory", str(256 * 1024 * 1024)]
    assert redis_cli(port, *admin, "CONFIG", "GET", "protected-mode").split() == ["protected-mode", "yes"]
    assert redis_cli(port, *admin, "CONFIG", "GET", "bind").split()[1:] == ["127.0.0.1"]


def test_the_cache_redis_evicts_keeps_nothing_and_knows_no_scheduler(rendered_cache_redis):
    port = rendered_cache_redis
    admin = ("admin", REDIS_ADMIN_PASSWORD)
    assert redis_cli(port, *admin, "CONFIG", "GET", "maxmemory-policy").split() == ["maxmemory-policy", "allkeys-lru"]
    assert redis_cli(port, *admin, "CONFIG", "GET", "appendonly").split() == ["appendonly", "no"]
    assert redis_cli(port, *admin, "CONFIG", "GET", "save") == "save"
    assert redis_cli(port, "api", REDIS_PASSWORD, "SET", "api:cache:x", "1") == "OK"
    assert "WRONGPASS" in redis_cli(port, "scheduler", REDIS_SCHEDULER_PASSWORD, "PING")


@pytest.mark.parametrize("user, password", [("api", REDIS_PASSWORD), ("scheduler", REDIS_SCHEDULER_PASSWORD)])
def test_the_services_redis_users_may_not_administer_or_leave_their_keys(rendered_redis, user, password):
    port = rendered_redis
    assert redis_cli(port, user, password, "SET", "api:probe", "1") == "OK"
    for command in (["FLUSHALL"], ["FLUSHDB"], ["CONFIG", "GET", "maxmemory"], ["CONFIG", "SET", "save", ""],
                    ["DEBUG", "SLEEP", "0"], ["KEYS", "*"], ["SCRIPT", "FLUSH"], ["ACL", "LIST"],
                    ["SHUTDOWN"], ["SET", "elsewhere:key", "1"], ["GET", "elsewhere:key"]):
        refusal = redis_cli(port, user, password, *command)
        # Redis 7 refuses DEBUG to everyone before it asks the ACL.
        assert "NOPERM" in refusal or "DEBUG command not allowed" in refusal, (user, command, refusal)
    assert redis_cli(port, "admin", REDIS_ADMIN_PASSWORD, "GET", "api:probe") == "1"


def local_urls(rendered, data_port: int, cache_port: int) -> dict[str, str]:
    """The Redis URLs of the rendered api.env and scheduler.env, pointed at servers on this machine."""
    api_env = env_file(rendered.text("api.env"))
    scheduler_env = env_file(rendered.text("scheduler.env"))
    urls = {"api": api_env["REDIS_URL"], "cache": api_env["REDIS_CACHE_URL"], "scheduler": scheduler_env["REDIS_URL"]}
    assert {name: url.split(":")[1] for name, url in urls.items()} == {
        "api": "//api", "cache": "//api", "scheduler": "//scheduler"}
    return {name: url.replace("127.0.0.1:6379", f"127.0.0.1:{data_port}").replace("127.0.0.1:6380", f"127.0.0.1:{cache_port}")
            for name, url in urls.items()}


def test_the_kit_runs_as_those_users(rendered, rendered_redis, rendered_cache_redis, tmp_path):
    """The scheduler daemon (lease scripts, claims, heartbeat) and the API (probes, cache,
    counters, Idempotency-Key) do all their work with the rights the rendered ACL gives them."""
    urls = local_urls(rendered, rendered_redis, rendered_cache_redis)
    settings = {"REDIS_KEY_PREFIX": env_file(rendered.text("api.env"))["REDIS_KEY_PREFIX"],
                "SCHEDULER_HEARTBEAT_SECONDS": "0.5", "SCHEDULER_LEASE_TTL": "2", "SCHEDULER_TICK_SECONDS": "1"}
    scheduler = scheduler_process(tmp_path / "scheduler.log", REDIS_URL=urls["scheduler"], **settings).start()
    api = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=urls["api"], REDIS_CACHE_URL=urls["cache"],
                   SCHEDULER_JOBS="app.jobs:jobs", **settings).start()
    try:
        api.wait_serving()
        with api.client() as client:
            wait_until(lambda: client.get("/ready").status_code == 200, 20, "/ready with the ACL users")
            assert client.put("/cache/acl", json={"value": "v"}).status_code == 200
            assert client.get("/cache/acl").json()["value"] == "v"
            assert client.post("/counters/acl", headers={"idempotency-key": "acl-1"}).json()["value"] == 1
            assert client.post("/counters/acl", headers={"idempotency-key": "acl-1"}).json()["value"] == 1
            wait_until(lambda: any(job["id"] == "example" and job["run_count"]
                                   for job in client.get("/jobs").json()["jobs"]),
                       20, "the example job to run as user scheduler")
        assert "NOPERM" not in api.output() + scheduler.output()
    finally:
        api.stop()
        assert scheduler.stop() == 0


def test_a_full_data_redis_answers_507_and_the_cache_still_works(rendered, rendered_cache_redis, tmp_path):
    """Writes to the data Redis fail when it is full (it never evicts): the API answers 507 with a
    JSON body and nothing is written; the cache Redis is another server and keeps working."""
    with running_redis(rendered.root / "redis.conf", tmp_path) as data_port:
        urls = local_urls(rendered, data_port, rendered_cache_redis)
        admin = ("admin", REDIS_ADMIN_PASSWORD)
        # Filled first, then limited to half of it: filling up to the limit leaves the server a
        # query buffer's size above it, and below it again once redis-cli's connection is freed.
        for i in range(64):
            assert redis_cli(data_port, *admin, "SET", f"api:filler:{i}", "x" * 65536) == "OK"
        assert redis_cli(data_port, *admin, "CONFIG", "SET", "maxmemory", "2mb") == "OK"
        assert "OOM" in redis_cli(data_port, *admin, "SET", "api:filler:last", "x")
        api = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=urls["api"], REDIS_CACHE_URL=urls["cache"],
                       SCHEDULER_JOBS="").start()
        try:
            api.wait_serving()
            with api.client() as client:
                for headers in ({}, {"idempotency-key": "full-1"}):
                    response = client.post("/counters/full", headers=headers)
                    assert response.status_code == 507, response.text
                    assert "storage full" in response.json()["detail"]
                assert client.put("/cache/still", json={"value": "v"}).status_code == 200
                assert client.get("/cache/still").json()["value"] == "v"
            assert redis_cli(data_port, *admin, "EXISTS", "api:counters:full") == "0"
            assert "Traceback" not in api.output()
        finally:
            api.stop()


def test_api_env_points_the_services_at_redis_with_the_password(rendered):
    env = env_file(rendered.text("api.env"))
    assert env["REDIS_URL"] == f"redis://api:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:6379/0"
    assert env["REDIS_CACHE_URL"] == f"redis://api:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:6380/0"
    assert env["REDIS_KEY_PREFIX"] == "api:"
    assert env["API_ENV"] == "production"
    # Only nginx (and root) can reach the socket, so the forwarded headers are trusted from it.
    assert env["API_FORWARDED_ALLOW_IPS"] == "*"
    assert "API_CONTROL_SOCKET" not in env and "API_BIND" not in env


def test_api_env_names_the_project_and_the_probe_paths(rendered):
    env = env_file(rendered.text("api.env"))
    # The role defaults: the example app of this repository.
    assert (env["ASGI_APP"], env["SCHEDULER_JOBS"]) == ("app.main:app", "app.jobs:jobs")
    assert (env["HEALTH_PATH"], env["READY_PATH"]) == ("/health", "/ready")
    # CORS is a setting of the example app, not of the kit.
    assert "CORS_ORIGINS" not in env


def test_api_env_of_another_project_without_redis_or_scheduler(tmp_path):
    out = render(tmp_path, groups=("api",), api_asgi_app="shop.web:api", api_scheduler_jobs="",
                 api_health_path="/livez", api_ready_path="/readyz",
                 api_extra_env={"CORS_ORIGINS": "https://a.example", "SHOP_NAME": 'say "hi"'})
    env = env_file(out.text("api.env"))
    assert (env["ASGI_APP"], env["SCHEDULER_JOBS"]) == ("shop.web:api", "")
    assert (env["HEALTH_PATH"], env["READY_PATH"]) == ("/livez", "/readyz")
    # No host in group redis: no Redis URL (and no password generated for it).
    assert env["REDIS_URL"] == ""
    assert env["CORS_ORIGINS"] == "https://a.example" and env["SHOP_NAME"] == 'say "hi"'
