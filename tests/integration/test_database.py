"""PostgreSQL through the kit (vmkit.database) and the example's notes, against a real PostgreSQL
server and a real gunicorn (2 workers): the migrations, the routes, and what the API answers
while the database is down, restarts, or was down when a worker started."""

import subprocess
import sys
import threading
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from support import Gunicorn, PostgresServer, base_env, wait_until

# Every request below is bounded by this: a hung worker fails the test instead of stalling it.
CLIENT_TIMEOUT = 10
DATABASE_TIMEOUT = "1"
UNAVAILABLE = {"detail": "database unavailable"}


def migrate(database_url: str) -> subprocess.CompletedProcess:
    """The release hook, as the deployment runs it."""
    return subprocess.run([sys.executable, "-m", "app.migrate"], env=base_env(DATABASE_URL=database_url),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().create()
    try:
        migrated = migrate(server.url)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        yield server
    finally:
        server.remove()


def database_api(postgres: PostgresServer, log_path) -> Gunicorn:
    return Gunicorn(log_path, DATABASE_URL=postgres.url, DATABASE_TIMEOUT=DATABASE_TIMEOUT).start()


@pytest.fixture(scope="module")
def api(postgres, tmp_path_factory) -> Iterator[Gunicorn]:
    server = database_api(postgres, tmp_path_factory.mktemp("api") / "gunicorn.log")
    try:
        yield server.wait_serving()
    finally:
        server.stop()


@pytest.fixture
def database_back(postgres) -> Iterator[PostgresServer]:
    """For the tests that stop the server: whatever happens, it runs again for the next test."""
    yield postgres
    if postgres.proc is None:
        postgres.start()


def rows(postgres: PostgresServer, tag: str) -> set[int]:
    return {int(row) for row in postgres.psql(f"SELECT id FROM notes WHERE tag = '{tag}'").split()}


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == UNAVAILABLE
    assert int(response.headers["retry-after"]) > 0


# ---- migrations --------------------------------------------------------------------------------


def test_the_migrations_create_the_notes_table_and_a_second_run_changes_nothing(postgres):
    assert postgres.psql("SELECT version_num FROM alembic_version") == "0001"
    assert postgres.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'notes'") == "4"
    again = migrate(postgres.url)
    assert again.returncode == 0, again.stderr
    assert "Running upgrade" not in again.stdout
    assert postgres.psql("SELECT version_num FROM alembic_version") == "0001"


def test_without_a_database_there_is_nothing_to_migrate():
    done = migrate("")
    assert done.returncode == 0, done.stderr
    assert "nothing to migrate" in done.stdout


def test_a_database_that_refuses_the_login_fails_the_hook_without_showing_the_password(postgres):
    url = postgres.url.replace(quote(PostgresServer.PASSWORD, safe=""), "wrong-password")
    done = migrate(url)
    assert done.returncode != 0
    assert PostgresServer.PASSWORD not in done.stdout + done.stderr


# ---- the notes ---------------------------------------------------------------------------------


def test_each_201_is_one_row_and_the_count_matches(client, postgres):
    created = [client.post("/notes", json={"text": f"note {i} ✓", "tag": "counted"}) for i in range(5)]
    assert [response.status_code for response in created] == [201] * 5
    ids = {response.json()["id"] for response in created}
    assert rows(postgres, "counted") == ids
    assert client.get("/notes/count", params={"tag": "counted"}).json() == {"tag": "counted", "count": 5}
    assert client.get("/notes/count").json()["count"] >= 5

    note = client.get(f"/notes/{min(ids)}")
    assert note.status_code == 200
    assert note.json()["text"].endswith("✓") and note.json()["tag"] == "counted"
    assert note.json()["created_at"]


def test_a_missing_note_is_404(client):
    assert client.get(f"/notes/{2**62}").status_code == 404


@pytest.mark.parametrize("body", [
    {"text": "", "tag": "t"},
    {"text": "x" * 1001, "tag": "t"},
    {"text": "nul \x00 inside", "tag": "t"},
    {"text": "x", "tag": "Upper Case"},
    {"text": "x"},
    {"text": "x", "tag": "t", "extra": 1},
    {"text": 42, "tag": "t"},
])
def test_bad_notes_are_422_and_write_nothing(client, postgres, body):
    before = postgres.psql("SELECT count(*) FROM notes")
    assert client.post("/notes", json=body).status_code == 422
    assert postgres.psql("SELECT count(*) FROM notes") == before


@pytest.mark.parametrize("path", ["/notes/0", "/notes/-1", "/notes/abc", f"/notes/{2**63}",
                                  "/notes/count?tag=No%20Spaces"])
def test_bad_lookups_are_422(client, path):
    assert client.get(path).status_code == 422


# ---- outages -----------------------------------------------------------------------------------


def test_a_database_outage_gives_503_then_recovers_without_restart(api, client, database_back):
    postgres = database_back
    note_id = client.post("/notes", json={"text": "before", "tag": "outage"}).json()["id"]
    pids_before = api.worker_pids()
    postgres.stop()
    for _ in range(3):  # both workers, their pooled connections now dead
        for response in (client.post("/notes", json={"text": "during", "tag": "outage"}),
                         client.get("/notes/count", params={"tag": "outage"}),
                         client.get(f"/notes/{note_id}")):
            assert_unavailable(response)
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"]["ok"] is False
    assert ready.json()["checks"]["database"]["error"].startswith("database unavailable")
    assert client.get("/health").status_code == 200

    postgres.start()
    wait_until(lambda: client.post("/notes", json={"text": "after", "tag": "outage"}).status_code == 201,
               30, "a note to be written once the database is back")
    assert client.get(f"/notes/{note_id}").json()["text"] == "before"
    assert client.get("/ready").status_code == 200
    assert api.worker_pids() == pids_before
    logged = api.output()
    assert "database unavailable" in logged
    assert PostgresServer.PASSWORD not in logged and quote(PostgresServer.PASSWORD, safe="") not in logged


def test_inserts_through_a_database_restart_are_a_row_per_201_and_otherwise_503(api, database_back):
    """Clients insert without pause while the database restarts under them: each answer is a
    201 whose row is there or a 503, never a 500 (returning a connection the restart broke used
    to raise after the request had been answered)."""
    postgres = database_back
    statuses: list[int] = []
    created: set[int] = set()
    stop = threading.Event()

    def insert_until_stopped() -> None:
        with api.client() as http:
            while not stop.is_set():
                response = http.post("/notes", json={"text": "through a restart", "tag": "restart"})
                statuses.append(response.status_code)
                if response.status_code == 201:
                    created.add(response.json()["id"])

    def answered(count: int) -> bool:
        return len(statuses) >= count

    threads = [threading.Thread(target=insert_until_stopped) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: answered(40), 30, "inserts before the restart")
        postgres.stop()
        wait_until(lambda: 503 in statuses, 30, "inserts to get 503 while the database is down")
        postgres.start()
        before_back = len(statuses)
        wait_until(lambda: statuses[before_back:].count(201) >= 40, 30, "inserts after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT * 2)

    assert set(statuses) == {201, 503}, sorted(set(statuses))
    assert statuses.count(201) == len(created)
    stored = rows(postgres, "restart")
    assert created <= stored
    # A 503 may be an insert whose commit reached the database just before the connection did not.
    assert len(stored) <= len(statuses)
    assert "Exception in ASGI application" not in api.output()


def test_a_worker_started_while_the_database_is_down_serves_503_then_recovers(database_back, tmp_path):
    postgres = database_back
    postgres.stop()
    server = database_api(postgres, tmp_path / "gunicorn.log")
    try:
        server.wait_serving()
        with server.client(timeout=CLIENT_TIMEOUT) as client:
            assert_unavailable(client.post("/notes", json={"text": "early", "tag": "late-start"}))
            assert client.get("/ready").status_code == 503
            postgres.start()
            wait_until(lambda: client.post("/notes", json={"text": "x", "tag": "late-start"}).status_code == 201,
                       30, "the worker to reach the database once it is up")
            assert client.get("/ready").status_code == 200
        assert "database unreachable at start-up" in server.output()
    finally:
        server.stop()


def test_without_database_url_the_notes_say_so_and_the_rest_serves(tmp_path):
    server = Gunicorn(tmp_path / "gunicorn.log").start()
    try:
        server.wait_serving()
        with server.client(timeout=CLIENT_TIMEOUT) as client:
            for response in (client.post("/notes", json={"text": "x", "tag": "t"}),
                             client.get("/notes/count"), client.get("/notes/1")):
                assert response.status_code == 503
                assert response.json() == {"detail": "no database: DATABASE_URL is not set"}
            ready = client.get("/ready")
            assert (ready.status_code, ready.json()["checks"]) == (200, {})
            assert client.get("/large-response", params={"kb": 1}).status_code == 200
    finally:
        server.stop()
