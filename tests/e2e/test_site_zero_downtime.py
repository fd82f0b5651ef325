"""The session's host under load (test_site.py provisioned it): a restart, a reload, workers
recycled by max_requests, a deploy and a rollback fail no request; a release that cannot start is
switched back. Runs after test_site.py and before test_site_faults.py (SITE_MODULES in conftest.py).
"""

import re
import time
from pathlib import Path

import pytest
from api_host import ApiHost
from e2e_support import assert_no_failures, broken_project, under_load, workers
from support import wait_until

# Above pytest's 300 s, as in test_site.py: deploy.yml and rollback.yml run under load, the
# recycling test loads the host for 1 to 3 minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def current_release(site: ApiHost) -> str:
    return site.sh("readlink /srv/api/current").stdout.strip()


def running_releases(site: ApiHost) -> dict[str, str]:
    """RELEASE_ID in the environment each service was started with."""
    script = ("for unit in api api-scheduler; do pid=$(systemctl show -p MainPID --value $unit); "
              "echo $unit $(tr '\\0' '\\n' < /proc/$pid/environ | sed -n 's/^RELEASE_ID=//p'); done")
    return dict(line.split() for line in site.sh(script).stdout.splitlines())


def test_restart_under_load_fails_no_request(site):
    before, _ = workers(site)
    # Each POST inserts a row in PostgreSQL (the reload, recycling and rollback runs count in Redis).
    run, _ = under_load(site, lambda: site.sh("systemctl restart api"), notes=True)
    assert_no_failures(site, run)
    after, _ = workers(site)
    assert after != before


def test_reload_under_load_fails_no_request(site):
    main, old = workers(site)

    def reload() -> None:
        site.sh("systemctl reload api")
        # Load stays on until every old worker has been replaced.
        wait_until(lambda: (w := workers(site)[1]) and not w & old, 60, "new workers after HUP")

    run, _ = under_load(site, reload)
    assert_no_failures(site, run)
    assert workers(site)[0] == main


RECYCLE_SECONDS = 60


def test_workers_recycled_by_max_requests_under_load_fail_no_request(site):
    """API_MAX_REQUESTS small enough that every worker is replaced several times in a minute."""
    env = "/etc/api/api.env"
    original = site.sh(f"cat {env}").stdout
    site.sh(f"sed -i -e 's/^API_MAX_REQUESTS=.*/API_MAX_REQUESTS=\"300\"/' "
            f"-e 's/^API_MAX_REQUESTS_JITTER=.*/API_MAX_REQUESTS_JITTER=\"100\"/' {env} "
            "&& systemctl restart api")
    invocation = site.unit("api.service", "InvocationID")["InvocationID"]
    try:
        run, _ = under_load(site, lambda: time.sleep(RECYCLE_SECONDS), max_seconds=RECYCLE_SECONDS + 120)
        started = site.sh(f"journalctl _SYSTEMD_INVOCATION_ID={invocation} -o cat --no-pager "
                          "| grep -c '\"worker started\"'").stdout.strip()
        replaced = int(started) - int(site.env_setting("API_WORKERS"))
        print(f"{replaced} workers replaced by max_requests in {RECYCLE_SECONDS} s")
        assert replaced >= 3 * int(site.env_setting("API_WORKERS"))
        assert_no_failures(site, run)
    finally:
        site.python(f"open({env!r}, 'w').write({original!r})")
        site.sh("systemctl restart api")


@pytest.fixture(scope="module")
def first_release(site) -> dict:
    """The release site.yml installed, before the deploy tests change it."""
    return {"version": site.health()["version"], "dir": current_release(site)}


def test_deploy_of_a_new_release_under_load_fails_no_request(site, first_release):
    version = f"{first_release['version']}-e2e"
    # Rows inserted while the release's migration hook runs and the release switches.
    load, run = under_load(site, lambda: site.playbook("deploy.yml", "-e", f"api_version={version}"), notes=True)
    print(f"deploy.yml: {run.seconds:.0f} s")
    assert run.returncode == 0, str(run)
    assert_no_failures(site, load)
    assert site.health()["version"] == version
    assert current_release(site) != first_release["dir"]
    assert running_releases(site) == dict.fromkeys(["api", "api-scheduler"], Path(current_release(site)).name)


def test_rollback_under_load_fails_no_request(site, first_release):
    load, run = under_load(site, lambda: site.playbook("rollback.yml"))
    print(f"rollback.yml: {run.seconds:.0f} s")
    assert run.returncode == 0, str(run)
    assert_no_failures(site, load)
    assert site.health()["version"] == first_release["version"]
    assert current_release(site) == first_release["dir"]
    assert running_releases(site) == dict.fromkeys(["api", "api-scheduler"], Path(first_release["dir"]).name)


def test_release_that_cannot_start_is_switched_back(site, first_release, tmp_path):
    source = broken_project(tmp_path / "broken")
    old = first_release["dir"]
    assert current_release(site) == old

    run = site.playbook("deploy.yml", "-e", f"api_project_dir={source}",
                        "-e", f"api_version={first_release['version']}-broken")
    message = " ".join(run.output.split())
    print(f"deploy.yml of a broken release: {run.seconds:.0f} s; {message.rpartition('msg: ')[2][:400]}")
    assert run.returncode != 0, str(run)
    assert re.search(rf"Release {re.escape(first_release['version'])}-broken-\w+ did not come up on "
                     rf"{re.escape(site.name)}", message), str(run)
    assert f"Switched back to {Path(old).name}, which is ready again" in message, str(run)
    # What to look at: the failed release's own log lines.
    # (after several crash-restarts the app's own traceback may be older than these lines)
    assert "Last lines of journalctl -u api" in message and '"logger":"gunicorn.error"' in message, str(run)
    assert current_release(site) == old
    assert site.health()["version"] == first_release["version"]
    assert site.get("/ready").status_code == 200
    assert running_releases(site) == dict.fromkeys(["api", "api-scheduler"], Path(old).name)
