"""Apps other than the example, and deployments without Redis or a scheduler: the kit's
gunicorn.conf.py and scheduler run whatever the settings name, and the probes ask only for what
the deployment has."""

import subprocess
import sys

import httpx
import pytest

from support import REPO, Gunicorn, base_env, scheduler_process, wait_until


def test_another_app_with_its_own_probe_and_database(shop, tmp_path):
    with shop.client() as client:
        assert client.get("/prices/apple").json() == {"item": "apple", "cents": 30}
        assert client.get("/prices/APPLE").status_code == 422
        assert client.get("/healthz").json() == {"status": "ok", "version": "3.1.4"}
        ids = {client.post("/orders/pear").json()["id"] for _ in range(20)}
        assert len(ids) == 20 and client.get("/orders/pear").json()["count"] == 20
        # The kit adds no probe routes of its own to an app that does not include them.
        assert client.get("/health").status_code == 404 and client.get("/ready").status_code == 404
    assert (tmp_path / "shop.db").is_file()
    access = wait_until(lambda: [line for line in shop.log_lines() if line.get("path") == "/prices/apple"],
                        10, "the access line of /prices/apple")
    assert access[0]["logger"] == "vmkit.access" and access[0]["status"] == 200


def test_one_path_for_both_probes_answers_readiness(tmp_path, redis_server):
    """HEALTH_PATH == READY_PATH: the kit's probes router serves readiness there (ready implies
    alive), with the dependencies' checks."""
    server = Gunicorn(tmp_path / "gunicorn.log", HEALTH_PATH="/up", READY_PATH="/up", SCHEDULER_JOBS="",
                      REDIS_URL=redis_server.url).start()
    try:
        server.wait_serving()
        with server.client() as client:
            up = client.get("/up")
            assert up.status_code == 200 and up.json()["status"] == "ready"
            assert up.json()["checks"]["redis"]["ok"] is True
            assert client.get("/health").status_code == 404
    finally:
        server.stop()


def test_the_example_app_without_redis_or_scheduler_is_ready_and_its_cache_says_503(tmp_path):
    server = Gunicorn(tmp_path / "gunicorn.log").start()
    try:
        server.wait_serving()
        with server.client() as client:
            ready = client.get("/ready")
            assert (ready.status_code, ready.json()["checks"]) == (200, {})
            assert client.get("/cache/k").status_code == 503
    finally:
        server.stop()


def test_a_scheduler_without_redis_makes_the_app_not_ready_not_broken(tmp_path):
    server = Gunicorn(tmp_path / "gunicorn.log", SCHEDULER_JOBS="app.jobs:jobs").start()
    try:
        server.wait_serving()
        with server.client() as client:
            ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["scheduler"]["error"] == "redis unavailable"
    finally:
        server.stop()


def test_a_scheduler_with_no_jobs_of_the_app_still_beats_for_readiness(tmp_path, redis_server):
    (tmp_path / "no_jobs.py").write_text("jobs = []\n")
    scheduler = scheduler_process(tmp_path / "scheduler.log", REDIS_URL=redis_server.url,
                                  SCHEDULER_JOBS="no_jobs:jobs", PYTHONPATH=str(tmp_path),
                                  SCHEDULER_HEARTBEAT_SECONDS="0.5", SCHEDULER_LEASE_TTL="2").start()
    api = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=redis_server.url,
                   SCHEDULER_JOBS="no_jobs:jobs", PYTHONPATH=str(tmp_path)).start()
    try:
        api.wait_serving()
        ready = wait_until(lambda: (r := httpx.get(f"{api.url}/ready", timeout=10)).status_code == 200 and r,
                           20, "/ready with a heartbeat but no job of the app")
        assert ready.json()["checks"]["scheduler"]["ok"] is True
    finally:
        api.stop()
        assert scheduler.stop() == 0


@pytest.mark.parametrize(("jobs", "message"), [
    ("", "SCHEDULER_JOBS is not set"),
    ("nowhere_to_be_found:jobs", "SCHEDULER_JOBS='nowhere_to_be_found:jobs'"),
    ("app.main:app", "must name a list of vmkit.scheduler.Job"),
])
def test_the_scheduler_refuses_a_job_list_it_cannot_use(tmp_path, jobs, message):
    result = subprocess.run([sys.executable, "-m", "vmkit.scheduler"], cwd=REPO, timeout=60,
                            env=base_env(SCHEDULER_JOBS=jobs, REDIS_URL="redis://127.0.0.1:1/0"),
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr
