"""gunicorn.conf.py with real gunicorn processes: worker ids, signals, graceful stop, bad settings."""

import os
import signal
import socket
import stat
import subprocess

import httpx
import pytest

from support import EXAMPLE_APP, REPO, VENV_BIN, Gunicorn, base_env, free_port, wait_until


def _replaced(server: Gunicorn, count: int, gone: set[int]) -> dict[int, int]:
    """pid -> id once `count` workers live, none of them in `gone`, each having logged its id."""
    def settled() -> dict[int, int] | None:
        ids = server.worker_ids()
        ok = len(ids) == count and None not in ids.values() and not gone & ids.keys()
        return ids if ok else None

    return wait_until(settled, 30, f"{count} workers, none of {sorted(gone)}")


def _pid_of(ids: dict[int, int], worker_id: int) -> int:
    return next(pid for pid, wid in ids.items() if wid == worker_id)


def test_worker_ids_stay_0_to_n_minus_1_across_kill_ttin_ttou_and_hup(tmp_path, redis_server):
    server = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=redis_server.url, API_WORKERS="3").start()
    try:
        server.wait_serving()
        ids = server.settled_ids(3)
        assert sorted(ids.values()) == [0, 1, 2]

        # A crashed worker's replacement takes over its id; the others are untouched.
        victim = _pid_of(ids, 1)
        os.kill(victim, signal.SIGKILL)
        after_kill = _replaced(server, 3, {victim})
        assert sorted(after_kill.values()) == [0, 1, 2]
        assert _pid_of(after_kill, 0) == _pid_of(ids, 0)
        assert _pid_of(after_kill, 2) == _pid_of(ids, 2)

        # Make id 2 the youngest worker: gunicorn's own TTOU would now retire id 0 (the oldest)
        # and leave {1, 2}; the nworkers_changed hook makes it retire id 2 instead.
        victim = _pid_of(after_kill, 2)
        os.kill(victim, signal.SIGKILL)
        before_ttou = _replaced(server, 3, {victim})
        server.signal(signal.SIGTTOU)
        after_ttou = _replaced(server, 2, {_pid_of(before_ttou, 2)})
        assert sorted(after_ttou.values()) == [0, 1]
        assert _pid_of(after_ttou, 0) == _pid_of(before_ttou, 0)

        server.signal(signal.SIGTTIN)
        _replaced(server, 3, set())
        server.signal(signal.SIGTTIN)
        after_ttin = _replaced(server, 4, set())
        assert sorted(after_ttin.values()) == [0, 1, 2, 3]
        assert _pid_of(after_ttin, 0) == _pid_of(before_ttou, 0)

        # HUP: a new generation of API_WORKERS (3) workers; once the old one is gone, 0..2 again.
        server.signal(signal.SIGHUP)
        after_hup = _replaced(server, 3, set(after_ttin))
        assert sorted(after_hup.values()) == [0, 1, 2]

        server.signal(signal.SIGTTOU)
        after_hup_ttou = _replaced(server, 2, {_pid_of(after_hup, 2)})
        assert sorted(after_hup_ttou.values()) == [0, 1]

        assert server.stop() == 0
        released = {line["released_worker_id"] for line in server.log_lines() if "released_worker_id" in line}
        assert released == {0, 1, 2, 3}
    finally:
        server.stop()


def test_recycled_workers_keep_their_ids(tmp_path, redis_server):
    server = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=redis_server.url,
                      API_MAX_REQUESTS="3", API_MAX_REQUESTS_JITTER="0").start()
    try:
        first = server.wait_serving().settled_ids(2)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            def recycled() -> dict[int, int] | None:
                try:
                    client.get("/health", headers={"connection": "close"})
                except httpx.TransportError:
                    pass  # a connection accepted by a worker just as it recycles is reset

                ids = server.worker_ids()
                done = len(ids) == 2 and None not in ids.values() and not first.keys() & ids.keys()
                return ids if done else None

            ids = wait_until(recycled, 30, "both workers to be recycled by max_requests")
        assert sorted(ids.values()) == [0, 1]
    finally:
        server.stop()


def test_sigterm_lets_an_in_flight_request_finish(tmp_path, redis_server):
    server = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=redis_server.url, API_WORKERS="1").start()
    try:
        server.wait_serving()
        body = b'{"value": "written during shutdown"}'
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            reader = sock.makefile("rb")
            sock.sendall(
                b"PUT /cache/in-flight HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            # uvicorn sends 100 Continue when the app first asks for the body: from here on the
            # request is inside the PUT handler, waiting.
            assert reader.readline().startswith(b"HTTP/1.1 100")
            assert reader.readline() == b"\r\n"

            server.signal(signal.SIGTERM)
            # Both master and worker have closed the listening socket: shutdown is under way.
            wait_until(lambda: _refused(server.port), 10, "the port to stop accepting")
            assert server.proc.poll() is None

            sock.sendall(body)
            status = reader.readline()
            headers = {}
            while (line := reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            payload = reader.read(int(headers["content-length"]))
        assert status.startswith(b"HTTP/1.1 200"), status
        assert headers.get("connection") == "close"
        assert b'"in-flight"' in payload
        assert server.wait(30) == 0
        assert redis_server.command("GET", "api:cache:in-flight") == "written during shutdown"
    finally:
        server.stop()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_WORKERS", "many"),
        ("API_WORKERS", "0"),
        ("API_ENV", "staging"),
        ("ASGI_APP", "app/main.py"),
        ("LOG_LEVEL", "verbose"),
        ("API_METRICS_BIND", "9180"),
        ("REDIS_URL", "http://user:pw-canary-123@cache.example.test/0"),
    ],
)
def test_a_bad_setting_stops_gunicorn_naming_the_variable(tmp_path, name, value):
    result = run_gunicorn(**{"ASGI_APP": EXAMPLE_APP, name: value})
    assert result.returncode == 2
    assert f"invalid environment variable {name}=" in result.stderr
    assert "pw-canary-123" not in result.stderr + result.stdout


def run_gunicorn(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py"], cwd=REPO,
        env=base_env(API_BIND=f"127.0.0.1:{free_port()}", **env),
        capture_output=True, text=True, timeout=60,
    )


def test_without_asgi_app_gunicorn_says_which_setting_names_the_app():
    result = run_gunicorn()
    assert result.returncode != 0
    assert "ASGI_APP is not set" in result.stderr


def test_a_bad_setting_of_the_app_stops_its_workers_naming_the_variable():
    # The app's own settings are read when a worker imports the app: gunicorn stops with
    # "worker failed to boot" (exit 3) and the worker's message.
    result = run_gunicorn(ASGI_APP=EXAMPLE_APP, SCHEDULER_TICK_SECONDS="0", API_WORKERS="1")
    assert result.returncode == 3
    assert "invalid environment variable SCHEDULER_TICK_SECONDS='0'" in result.stdout + result.stderr


def test_starts_and_stays_live_while_redis_is_down(tmp_path):
    server = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                      REDIS_SOCKET_TIMEOUT="0.5").start()
    try:
        server.wait_serving()
        with server.client(timeout=10) as client:
            assert client.get("/health").status_code == 200
            assert client.get("/cache/k").status_code == 503
            assert client.get("/ready").status_code == 503
        # Each worker pings Redis once as it starts (up to two socket timeouts), not all at once.
        def warned_by() -> set[int]:
            return {line["worker_id"] for line in server.log_lines()
                    if line["msg"].startswith("redis unreachable")}

        wait_until(lambda: warned_by() == {0, 1}, 15, "both workers to warn that Redis is down")
    finally:
        server.stop()


H11_WORKER = """
from vmkit.worker import Worker

class H11Worker(Worker):
    CONFIG_KWARGS = {"loop": "asyncio", "http": "h11"}
"""


def test_a_fallback_runtime_is_reported_and_logged_as_an_error_in_production(tmp_path, redis_server):
    # An asyncio + h11 worker stands in for a release whose uvloop / httptools wheels are broken.
    (tmp_path / "h11_worker.py").write_text(H11_WORKER)
    server = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=redis_server.url, API_ENV="production",
                      PYTHONPATH=str(tmp_path),
                      GUNICORN_CMD_ARGS="--worker-class h11_worker.H11Worker").start()
    try:
        server.wait_serving()
        assert httpx.get(f"{server.url}/health", timeout=10).json()["runtime"] == {
            "loop": "asyncio", "http": "h11",
        }
        errors = [line for line in server.log_lines()
                  if line["level"] == "error" and line["logger"] == "vmkit.loop_and_parser"]
        assert {(line["loop"], line["http"]) for line in errors} == {("asyncio", "h11")}
    finally:
        server.stop()


def test_control_socket_where_configured_and_none_by_default(tmp_path, redis_server):
    home = tmp_path / "home"
    home.mkdir()
    control = tmp_path / "run" / "gunicorn.ctl"
    control.parent.mkdir()
    with_socket = Gunicorn(tmp_path / "with.log", REDIS_URL=redis_server.url, HOME=str(home),
                           API_CONTROL_SOCKET=str(control)).start()
    without = Gunicorn(tmp_path / "without.log", REDIS_URL=redis_server.url, HOME=str(home)).start()
    try:
        with_socket.wait_serving()
        without.wait_serving()
        wait_until(control.exists, 10, "the control socket")
        assert stat.S_ISSOCK(control.stat().st_mode)
        assert stat.S_IMODE(control.stat().st_mode) == 0o600
        assert not (home / ".gunicorn").exists()
    finally:
        with_socket.stop()
        without.stop()
