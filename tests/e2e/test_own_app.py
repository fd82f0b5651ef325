"""Deploying an app the kit does not know (issues #7, #18), on a fresh host of its own, with
inventory variables only: tests/shop (package shop, src/ layout, its own pyproject and lock, ASGI
app shop.web:api, no scheduler, no Redis, one probe route /healthz for liveness and readiness, its
orders in SQLite in the state directory, `python -m shop.migrate` as release hook). Then the example
app goes back onto the same host. The tests run in order and build on each other.
"""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_host import ApiHost
from e2e_support import REPO, bare_host, operator_host
from load import LoadResult, Target, run_under_load

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SHOP = REPO / "tests" / "shop"
STATE_DIR = "/var/lib/api"
NET = 111  # own1 is 10.231.111.2; the controller's end of its link is .1
# Runs in the new release, as the services run: its venv (shop is importable only there), its
# environment (RELEASE_ID from the release's release.env), its user and its state directory.
MARKER_HOOK = ("python -c 'import os, pathlib, shop; pathlib.Path(os.environ[\"STATE_DIRECTORY\"], "
               "\"hook-\" + os.environ[\"RELEASE_ID\"]).write_text(shop.__name__)'")
SHOP_VARS = {
    "api_project_dir": str(SHOP),
    "api_asgi_app": "shop.web:api",
    "api_scheduler_jobs": "",
    "api_health_path": "/healthz",
    "api_ready_path": "/healthz",
    "api_release_hooks": ["python -m shop.migrate", MARKER_HOOK],
    # The load tests send many clients' POSTs from the controller's one address.
    "nginx_rate_limit_exempt": [f"10.231.{NET}.1/32"],
}
LOAD_CLIENTS = 16
ORDERS = "load"


@pytest.fixture(scope="module")
def host(testhost_available) -> Iterator[dict]:
    """A bare host of this module's own (own1, 10.231.111.2)."""
    with bare_host("own", NET) as host:
        yield host


@pytest.fixture(scope="module")
def shop(host) -> Iterator[ApiHost]:
    with operator_host(host, "shop.yml", ["api"], SHOP_VARS) as api_host:
        yield api_host


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
    assert shop.get("/healthz").json() == {"status": "ok", "version": "3.1.4"}
    # No Redis and no scheduler where the app has none.
    units = shop.sh("systemctl list-unit-files --no-legend api-scheduler.service redis-server.service",
                    check=False).stdout
    assert units.strip() == ""
    assert shop.env_setting("ASGI_APP") == "shop.web:api"
    # The one probe route is both: the deploy waited on it, nginx passes it unthrottled.
    assert (shop.env_setting("HEALTH_PATH"), shop.env_setting("READY_PATH")) == ("/healthz", "/healthz")


def test_the_release_hooks_ran_in_the_services_sandbox(shop, shop_release):
    """The migration made the database in the state directory, and the marker hook wrote there as
    the service user, with the services' umask: nothing of it is readable by others."""
    marker = f"{STATE_DIR}/hook-{Path(shop_release).name}"
    listing = shop.sh(f"stat -c '%U %G %a %n' {STATE_DIR} {STATE_DIR}/shop.db {marker} && cat {marker}").stdout
    assert listing.split("\n") == [f"api api 750 {STATE_DIR}", f"api api 600 {STATE_DIR}/shop.db",
                                    f"api api 600 {marker}", "shop"]
    schema = shop.python(f"import sqlite3\nprint(sqlite3.connect('file:{STATE_DIR}/shop.db?mode=ro', uri=True)"
                         ".execute('select max(version) from schema_version').fetchone()[0])")
    assert schema.stdout.strip() == "2"


def test_api_exec_runs_a_one_off_command_like_the_service(shop, shop_release):
    """The operator's way into the app's environment: same user, settings, state directory and
    working directory as api.service, and its exit status comes back."""
    out = shop.sh("api-exec python -c 'import os, shop.db; print(os.getuid(), os.getcwd(), "
                  "os.environ[\"ASGI_APP\"], shop.db.count_orders())'").stdout.split()
    uid = shop.sh("id -u api").stdout.strip()
    assert out == [uid, shop_release, "shop.web:api", "0"]
    assert shop.sh("api-exec sh -c 'exit 3'", check=False).returncode == 3
    # The services' sandbox: nothing outside the state directory is writable.
    denied = shop.sh("api-exec touch /srv/api/current/x /etc/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr


def orders_under_load(shop: ApiHost, operation) -> LoadResult:
    """Non-idempotent POSTs (each 201 adds one row) beside GETs of the probe while `operation`
    runs; then every 2xx must be a row, and nothing failed."""
    before = shop.get(f"/orders/{ORDERS}").json()["count"]
    cursor = shop.journal_cursor()
    result, _ = run_under_load(Target(shop.address, shop.server_name, str(shop.ca)), operation,
                               path="/healthz", post_path=f"/orders/{ORDERS}", clients=LOAD_CLIENTS,
                               min_requests=3000)
    print(f"{result.total} requests ({result.posts_ok} POSTs answered 2xx), {len(result.failures)} failed, "
          f"versions {dict(result.versions)}")
    assert result.failures == [], (result.failures[:5], shop.app_errors(since=cursor))
    assert result.total >= 3000
    assert shop.get(f"/orders/{ORDERS}").json()["count"] - before == result.posts_ok
    return result


def test_restart_of_the_unknown_app_under_load_keeps_every_row(shop, shop_release):
    orders_under_load(shop, lambda: shop.sh("systemctl restart api"))


def test_deploy_and_rollback_under_load_keep_every_row(shop, shop_release):
    deployed = orders_under_load(shop, lambda: shop.playbook("deploy.yml", "-e", "api_version=3.1.5"))
    assert set(deployed.versions) <= {"3.1.4", "3.1.5"} and shop.get("/healthz").json()["version"] == "3.1.5"
    rolled_back = orders_under_load(shop, lambda: shop.playbook("rollback.yml"))
    assert "3.1.4" in rolled_back.versions
    assert shop.sh("readlink /srv/api/current").stdout.strip() == shop_release
    # Every row of the three runs is still there: the database lives outside the releases.
    assert shop.sh(f"stat -c '%U %a' {STATE_DIR}/shop.db").stdout.split() == ["api", "600"]


def test_a_failing_release_hook_stops_the_deploy_and_the_old_release_serves(shop, shop_release):
    failing = "echo migration-canary-6620 >&2; exit 7"
    run = shop.playbook("deploy.yml", "-e", json.dumps({"api_version": "3.1.5",
                                                        "api_release_hooks": [failing]}))
    message = " ".join(run.output.split())
    print(f"deploy.yml with a failing hook: {run.seconds:.0f} s")
    assert run.returncode != 0, str(run)
    assert "migration-canary-6620" in message and "exit code 7" in message, str(run)
    assert "3.1.4" in message and "is still the active release" in message, str(run)
    assert shop.sh("readlink /srv/api/current").stdout.strip() == shop_release
    assert shop.get("/healthz").json()["version"] == "3.1.4"


def test_the_example_app_goes_back_onto_the_same_host(host, shop):
    with operator_host(host, "example.yml", ["api", "scheduler", "redis"], {"api_project_dir": str(REPO)}) as example:
        run = example.playbook("site.yml")
        assert run.returncode == 0, str(run)
        assert example.health()["version"] == "0.1.0"
        assert example.get("/ready").status_code == 200
        assert example.get("/healthz").status_code == 404
        assert example.sh("systemctl is-active api-scheduler redis-server").stdout.split() == ["active"] * 2
