"""PostgreSQL on the session's host (issue #21): reached by the app alone, every inserted row kept
through a restart of the database (clear 503s only meanwhile; restarts of the app and deploys are
test_site_zero_downtime's), an inventory whose pools do not fit refused before any host is
touched, and a point-in-time recovery that brings back exactly the rows written before a time."""

import json
import secrets
import shlex
import time

import pytest
from api_host import ApiHost
from e2e_support import under_load
from support import stopped_by_the_checks

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(900)]


def psql(site: ApiHost, sql: str) -> str:
    """A statement in the app's database as the postgres superuser (peer authentication, on the host)."""
    return site.sh(f"runuser -u postgres -- psql -X -q -At -d api -c {shlex.quote(sql)}").stdout.strip()


def count(site: ApiHost, tag: str) -> int:
    response = site.get(f"/notes/count?tag={tag}")
    assert response.status_code == 200, response.text
    return response.json()["count"]


def post_note(site: ApiHost, tag: str) -> int:
    response = site.request("POST", "/notes", json={"text": "kept", "tag": tag})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_the_database_listens_privately_and_asks_every_client_for_a_password(site):
    listening = site.sh("ss -Htln 'sport = :5432' | awk '{print $4}'").stdout.split()
    assert listening and all(a.startswith("127.0.0.1:") for a in listening), listening
    rules = psql(site, "SELECT type, database[1], user_name[1], address, auth_method FROM pg_hba_file_rules")
    lines = [line.split("|") for line in rules.splitlines()]
    assert {auth for *_, auth in lines} <= {"peer", "scram-sha-256"}, rules
    assert all(kind == "local" for kind, *_, auth in lines if auth == "peer"), rules
    assert psql(site, "SHOW password_encryption") == "scram-sha-256"
    # The password reaches the app through its env file only: no process's argv holds it.
    assert "postgresql://" not in site.sh("ps -eo args").stdout
    ready = site.get("/ready")
    assert ready.status_code == 200, ready.text
    exposure = site.sh("systemd-analyze security --no-pager postgresql@15-main | tail -1").stdout.strip()
    print(f"systemd-analyze security postgresql@15-main: {exposure}")


def test_a_restart_of_postgresql_answers_clear_503s_and_the_app_recovers_by_itself(site):
    """Rows through `systemctl restart api` and a deploy are test_site_zero_downtime's; here the
    database itself restarts under the same load."""
    cursor = site.journal_cursor()
    run, _ = under_load(site, lambda: site.sh("systemctl restart postgresql"), notes=True)
    unavailable = [f for f in run.result.failures if f.startswith("POST 503")]
    print(f"{len(unavailable)} of {run.result.total} requests answered 503 'database unavailable'")
    # Only POSTs may fail, with the kit's JSON body; every 201 is a row.
    assert unavailable == run.result.failures, (run.result.failures[:5], site.app_errors(since=cursor))
    assert all(json.loads(f.split(": ", 1)[1])["detail"] == "database unavailable" for f in unavailable)
    assert run.rows(site) == run.result.posts_ok
    # Back without a restart of the app's own.
    assert post_note(site, "restart-pg") > 0
    assert site.get("/ready").status_code == 200


def test_pools_that_exceed_max_connections_stop_the_play_before_any_host_is_touched(site):
    run = site.playbook("site.yml", "-e", "postgres_max_connections=5")
    assert run.returncode != 0 and stopped_by_the_checks(run.tasks), str(run)
    for name in ("postgres_max_connections", "api_workers", "api_database_pool_size"):
        assert name in str(run), name


def test_point_in_time_recovery_brings_back_exactly_the_rows_before_the_time(site):
    tag = f"pitr-{secrets.token_hex(3)}"
    backup = site.playbook("postgres-backup.yml")
    assert backup.returncode == 0, str(backup)
    kept = [post_note(site, f"{tag}-before") for _ in range(5)]
    time.sleep(1.5)  # the target lies clearly between the two commits' times
    restore_target = site.sh("date -u '+%Y-%m-%d %H:%M:%S.%6N+00'").stdout.strip()
    time.sleep(1.5)
    lost = [post_note(site, f"{tag}-after") for _ in range(5)]
    psql(site, "DROP TABLE notes")
    run = site.playbook("postgres-restore.yml", "-e", f"postgres_restore_target='{restore_target}'")
    print(f"postgres-restore.yml to {restore_target}: {run.seconds:.0f} s")
    assert run.returncode == 0, str(run)
    assert count(site, f"{tag}-before") == 5 and count(site, f"{tag}-after") == 0
    assert all(site.get(f"/notes/{n}").status_code == 200 for n in kept)
    assert all(site.get(f"/notes/{n}").status_code == 404 for n in lost)
    # Written after the restore: the database takes new rows again.
    assert post_note(site, tag) > max(kept)
