"""The rendered host configuration other than nginx and the units: the nftables rules (checked by
nft without loading them), the Redis configuration (a real redis-server runs it) and api.env."""

import socket
import subprocess
from urllib.parse import quote

from deploy_static import REDIS_PASSWORD, env_file, render, run, tool
from support import free_port, stop_process, wait_until


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


def redis_command(port: int, *args: str) -> str:
    cli = [tool("redis-cli"), "-p", str(port), "--no-auth-warning", "-a", REDIS_PASSWORD, *args]
    return subprocess.run(cli, capture_output=True, text=True, timeout=10, check=True).stdout.strip()


def test_redis_runs_the_rendered_configuration(rendered, tmp_path):
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
        # The password is required ...
        anonymous = subprocess.run([tool("redis-cli"), "-p", str(port), "PING"], capture_output=True,
                                   text=True, timeout=10)
        assert "NOAUTH" in anonymous.stdout + anonymous.stderr
        # ... and the rendered settings are in force.
        assert redis_command(port, "PING") == "PONG"
        assert redis_command(port, "CONFIG", "GET", "maxmemory-policy").split() == ["maxmemory-policy", "allkeys-lru"]
        assert redis_command(port, "CONFIG", "GET", "maxmemory").split() == ["maxmemory", str(256 * 1024 * 1024)]
        assert redis_command(port, "CONFIG", "GET", "protected-mode").split() == ["protected-mode", "yes"]
        assert redis_command(port, "CONFIG", "GET", "bind").split()[1:] == ["127.0.0.1"]
    finally:
        stop_process(proc)


def test_api_env_points_the_services_at_redis_with_the_password(rendered):
    env = env_file(rendered.text("api.env"))
    assert env["REDIS_URL"] == f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:6379/0"
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
