"""Deploying an app the kit does not know (issue #7), on a fresh host of its own, with inventory
variables only: tests/shop (package shop, src/ layout, its own pyproject and lock, ASGI app
shop.web:api, no scheduler, no Redis, readiness at /status/ready, one release hook). Then the
example app goes back onto the same host. The tests run in order and build on each other.
"""

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e_support import REPO, ApiHost, bare_host
from load import Target, run_under_load

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SHOP = REPO / "tests" / "shop"
# Runs in the new release: its venv (shop is importable only there), its environment
# (RELEASE_ID comes from the release's release.env) and its user (the file belongs to api).
MARKER_HOOK = ("python -c 'import os, pathlib, shop; "
               "pathlib.Path(\"/tmp/shop-hook-\" + os.environ[\"RELEASE_ID\"]).write_text(shop.__name__)'")
SHOP_VARS = {
    "app_project_dir": str(SHOP),
    "app_asgi_app": "shop.web:api",
    "app_scheduler_jobs": "",
    "app_ready_path": "/status/ready",
    "app_release_hooks": [MARKER_HOOK],
}


@pytest.fixture(scope="module")
def host(testhost_available) -> Iterator[dict]:
    """A bare host of this module's own (own1, 10.231.111.2)."""
    with bare_host("own", 111) as host:
        yield host


def write_inventory(host: dict, filename: str, groups: list[str], variables: dict) -> Path:
    """What an operator writes: the host, its groups, and the settings of the app."""
    inventory = host["dir"] / filename
    entry = {host["name"]: host["access"]}
    inventory.write_text(yaml.safe_dump({"all": {
        "children": {group: {"hosts": entry} for group in groups},
        "vars": {"nginx_server_name": f"{host['name']}.test", **variables},
    }}))
    return inventory


@pytest.fixture(scope="module")
def shop(host) -> Iterator[ApiHost]:
    control_dir = Path(tempfile.mkdtemp(prefix="own-ssh-", dir="/tmp"))
    api_host = ApiHost.from_inventory(write_inventory(host, "shop.yml", ["api"], SHOP_VARS), control_dir)
    try:
        yield api_host
    finally:
        api_host.close()
        shutil.rmtree(control_dir, ignore_errors=True)


def kit_files_changed() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--", "deploy", "runtime", "gunicorn.conf.py"],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def shop_release(shop) -> str:
    before = kit_files_changed()
    run = shop.playbook("site.yml")
    print(f"site.yml with the shop app: {run.seconds:.0f} s")
    assert run.returncode == 0, str(run)
    assert kit_files_changed() == before
    return shop.sh("readlink /srv/api/current").stdout.strip()


def test_an_unknown_app_is_deployed_by_inventory_variables_only(shop, shop_release):
    assert Path(shop_release).name.startswith("3.1.4-")
    assert shop.get("/prices/apple").json() == {"item": "apple", "cents": 30}
    assert shop.get("/status/ready").json() == {"status": "ready", "checks": {}}
    health = shop.health()
    assert health["version"] == "3.1.4"
    assert health["runtime"] == {"loop": "uvloop", "http": "httptools"}
    # No Redis and no scheduler where the app has none.
    units = shop.sh("systemctl list-unit-files --no-legend api-scheduler.service redis-server.service",
                    check=False).stdout
    assert units.strip() == ""
    assert shop.env_setting("ASGI_APP") == "shop.web:api"


def test_the_release_hook_ran_in_the_new_release_as_the_app_user(shop, shop_release):
    marker = f"/tmp/shop-hook-{Path(shop_release).name}"
    assert shop.sh(f"stat -c '%U' {marker} && cat {marker}").stdout.split() == ["api", "shop"]


def test_restart_of_the_unknown_app_under_load_fails_no_request(shop, shop_release):
    result, _ = run_under_load(Target(shop.address, shop.server_name, str(shop.ca)),
                               lambda: shop.sh("systemctl restart api"), clients=16, min_requests=3000)
    print(f"restart under load: {result.total} requests, {len(result.failures)} failed")
    assert result.total >= 3000
    assert result.failures == [], result.failures[:5]


def test_a_failing_release_hook_stops_the_deploy_and_the_old_release_serves(shop, shop_release):
    failing = "echo migration-canary-6620 >&2; exit 7"
    run = shop.playbook("deploy.yml", "-e", json.dumps({"app_version": "3.1.5",
                                                        "app_release_hooks": [failing]}))
    message = " ".join(run.output.split())
    print(f"deploy.yml with a failing hook: {run.seconds:.0f} s")
    assert run.returncode != 0, str(run)
    assert "migration-canary-6620" in message and "exit code 7" in message, str(run)
    assert shop.sh("readlink /srv/api/current").stdout.strip() == shop_release
    assert shop.health()["version"] == "3.1.4"


def test_the_example_app_goes_back_onto_the_same_host(host, shop):
    inventory = write_inventory(host, "example.yml", ["api", "scheduler", "redis"], {})
    control_dir = Path(tempfile.mkdtemp(prefix="own-ssh-", dir="/tmp"))
    example = ApiHost.from_inventory(inventory, control_dir)
    try:
        run = example.playbook("site.yml")
        assert run.returncode == 0, str(run)
        assert example.health()["version"] == "0.1.0"
        assert example.get("/ready").status_code == 200
        assert example.get("/status/ready").status_code == 404
        assert example.sh("systemctl is-active api-scheduler redis-server").stdout.split() == ["active"] * 2
    finally:
        example.close()
        shutil.rmtree(control_dir, ignore_errors=True)
