"""The rendered host configuration other than nginx and the units: the nftables rules (checked by
nft without loading them), the Redis configuration (a real redis-server runs it) and api.env."""

import socket
import subprocess
from collections.abc import Iterator
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


@pytest.fixture
def rendered_redis(rendered, tmp_path) -> Iterator[int]:
    """redis-server running the rendered redis.conf; yields its port."""
    port = free_port()
    # The rendered file first (so it is parsed as on the host), then only what differs here.
    proc = subprocess.Popen(
        [tool("redis-server"), rendered.root / "redis.conf", "--port", str(port), "--dir", tmp_path,
         "--pidfile", tmp_path / "redis.pid", "--logfile", tmp_path / "redis.log", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / "redis.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(answers, 10, "redis-server with the rendered configuration")
        yield port
    finally:
        stop_process(proc)


def test_redis_runs_the_rendered_configuration(rendered_redis):
    port = rendered_redis
    # No password-less access: the default user is off ...
    assert "NOAUTH" in redis_cli(port, None, None, "PING")
    # ... and the operators' admin user sees the rendered settings in force.
    admin = ("admin", REDIS_ADMIN_PASSWORD)
    assert redis_cli(port, *admin, "CONFIG", "GET", "maxmemory-policy").split() == ["maxmemory-policy", "allkeys-lru"]
    assert redis_cli(port, *admin, "CONFIG", "GET", "maxmemory").split() == ["maxmemory", str(256 * 1024 * 1024)]
    assert redis_cli(port, *admin, "CONFIG", "GET", "protected-mode").split() == ["protected-mode", "yes"]
    assert redis_cli(port, *admin, "CONFIG", "GET", "bind").split()[1:] == ["127.0.0.1"]


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


def test_the_kit_runs_as_those_users(rendered, rendered_redis, tmp_path):
    """The scheduler daemon (lease scripts, claims, heartbeat) and the API (probes, cache,
    counters, Idempotency-Key) do all their work with the rights the rendered ACL gives them."""
    port = rendered_redis
    api_env = env_file(rendered.text("api.env"))
    scheduler_env = env_file(rendered.text("scheduler.env"))
    local = {"redis://api:", "redis://scheduler:"}
    api_url = api_env["REDIS_URL"].replace("127.0.0.1:6379", f"127.0.0.1:{port}")
    scheduler_url = scheduler_env["REDIS_URL"].replace("127.0.0.1:6379", f"127.0.0.1:{port}")
    assert {api_url[:12], scheduler_url[:18]} == local
    settings = {"REDIS_KEY_PREFIX": api_env["REDIS_KEY_PREFIX"], "SCHEDULER_HEARTBEAT_SECONDS": "0.5",
                "SCHEDULER_LEASE_TTL": "2", "SCHEDULER_TICK_SECONDS": "1"}
    scheduler = scheduler_process(tmp_path / "scheduler.log", REDIS_URL=scheduler_url, **settings).start()
    api = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=api_url, SCHEDULER_JOBS="app.jobs:jobs", **settings).start()
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


def test_api_env_points_the_services_at_redis_with_the_password(rendered):
    env = env_file(rendered.text("api.env"))
    assert env["REDIS_URL"] == f"redis://api:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:6379/0"
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
    out = render(tmp_path, groups=("api",), app_asgi_app="shop.web:api", app_scheduler_jobs="",
                 app_health_path="/livez", app_ready_path="/readyz",
                 app_extra_env={"CORS_ORIGINS": "https://a.example", "SHOP_NAME": 'say "hi"'})
    env = env_file(out.text("api.env"))
    assert (env["ASGI_APP"], env["SCHEDULER_JOBS"]) == ("shop.web:api", "")
    assert (env["HEALTH_PATH"], env["READY_PATH"]) == ("/livez", "/readyz")
    # No host in group redis: no Redis URL (and no password generated for it).
    assert env["REDIS_URL"] == ""
    assert env["CORS_ORIGINS"] == "https://a.example" and env["SHOP_NAME"] == 'say "hi"'
