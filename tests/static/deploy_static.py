"""Helpers of the static deployment checks (tests/static): run tools, render the templates.

Nothing here needs a test host; nothing touches the controller's own /etc/nginx or systemd.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ANSIBLE_DIR = DEPLOY / "ansible"
VENV_BIN = Path(sys.executable).parent
# Debian keeps nginx, nft and friends in sbin, which a non-login PATH may lack.
TOOL_PATH = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
SERVER_NAME = "api.static.test"
REDIS_PASSWORD = "static-check-password-0123"
REDIS_SCHEDULER_PASSWORD = "static-check-scheduler-4567"
REDIS_ADMIN_PASSWORD = "static-check-admin-8901"
POSTGRES_PASSWORD = "static-check-postgres-2345"
REDIS_MONITORING_PASSWORD = "static-check-monitoring-6789"
WEBHOOK_URL = "http://10.0.0.99:9999/alerts"


def tool(name: str) -> str:
    """Absolute path of a command the checks need; a missing one is an error, not a skip."""
    path = shutil.which(name, path=TOOL_PATH)
    assert path, f"{name} is not installed (make system-deps installs it)"
    return path


def run(*cmd: object, cwd: Path | None = None, timeout: float = 300,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": TOOL_PATH, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", "PY_COLORS": "0", **(env or {})}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def nginx_build_info() -> str:
    """What `nginx -V` prints on the controller; the nginx role reads its versions from it."""
    return run(tool("nginx"), "-V").stderr


@dataclass
class Rendered:
    root: Path

    def text(self, rel: str) -> str:
        return (self.root / rel).read_text()

    @property
    def nginx_conf(self) -> Path:
        return self.root / "nginx" / "nginx.conf"


def render(root: Path, groups: tuple[str, ...] = ("api", "scheduler", "redis"),
           peers: dict[str, tuple[str, ...]] | None = None, **overrides: object) -> Rendered:
    """Render every template of the deployment into root with ansible-playbook (tests/static/render.yml),
    for a host in the given inventory groups; peers are the other hosts of the inventory
    ({"web1": ("api",)}, at 10.0.0.11, 10.0.0.12, ... in that order; localhost is 10.0.0.5);
    overrides are extra vars."""
    nginx_dir = root / "nginx"
    for sub in ("units", "postgres", "nginx/sites-enabled", "nginx/conf.d", "nginx/modules-enabled", "log",
                "default", "monitoring"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    variables = {
        "nginx_conf_dir": str(nginx_dir),
        "nginx_tls_dir": str(nginx_dir / "tls"),
        "nginx_log_dir": str(root / "log"),
        "nginx_server_name": SERVER_NAME,
        "nginx_build": {"stderr": nginx_build_info()},
        "redis_password": REDIS_PASSWORD,
        "redis_scheduler_password": REDIS_SCHEDULER_PASSWORD,
        "redis_admin_password": REDIS_ADMIN_PASSWORD,
        "postgres_password": POSTGRES_PASSWORD,
        "redis_monitoring_password": REDIS_MONITORING_PASSWORD,
        "monitoring_webhook_url": WEBHOOK_URL,
        # The host's memory and vCPUs, which the postgres role reads from its facts.
        "postgres_memory_mb": 2048,
        "postgres_vcpus": 2,
        "api_release": {"version": "9.9.9", "release_id": "9.9.9-static"},
        **overrides,
    }
    (root / "vars.json").write_text(json.dumps(variables))
    inventory = root / "inventory"
    peers = peers or {}
    members = {group: [name for name, in_groups in peers.items() if group in in_groups] + (
        ["localhost"] if group in groups else []) for group in {*groups, *(g for gs in peers.values() for g in gs)}}
    inventory.write_text("localhost ansible_connection=local" + (" base_private_address=10.0.0.5\n" if peers else "\n")
                         + "".join(f"{name} ansible_host={peer_address(i)}\n" for i, name in enumerate(peers))
                         + "".join(f"[{group}]\n" + "".join(f"{name}\n" for name in names)
                                   for group, names in members.items()))
    result = run(VENV_BIN / "ansible-playbook", "-i", inventory,
                 Path(__file__).with_name("render.yml"), "-e", f"@{root / 'vars.json'}",
                 env={"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"})
    assert result.returncode == 0, result.stdout + result.stderr
    for item in json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["results"]:
        (root / item["item"]["key"]).write_text(item["msg"])
    return Rendered(root)


def peer_address(index: int) -> str:
    """Address of the index-th peer of render()."""
    return f"10.0.0.{11 + index}"


def make_throwaway_cert(tls_dir: Path, name: str) -> None:
    tls_dir.mkdir(parents=True, exist_ok=True)
    result = run(tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                 "-keyout", tls_dir / f"{name}.key", "-out", tls_dir / f"{name}.crt")
    assert result.returncode == 0, result.stderr


def env_file(text: str) -> dict[str, str]:
    """KEY="value" lines of a systemd EnvironmentFile as rendered by the api role."""
    values = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key] = json.loads(value) if value.startswith('"') else value
    return values


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every Key=value of a unit file, values in order of appearance."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings
