"""Long-lived work (issue #19) through TLS and nginx, on a host of this module's own (live1) with an
app the kit does not know (tests/shop), deployed with inventory variables only: streams arrive as
they are made, a request that is too slow gets one 504 and ran once, a long path waits longer, a
WebSocket reconnects after a restart, a stream and a long request in flight live through one,
and a background process stops cleanly on deploy.yml and then runs the new release. Last, the
example app's own consumer on the session's host. The tests run in order.
"""

import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from api_host import ApiHost
from e2e_support import REPO, bare_host, operator_host
from support import wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

NET = 112  # live1 is 10.231.112.2; the controller's end of its link is .1
# nginx's own upstream timeout, short here so that a too slow request meets it in seconds.
PROXY_TIMEOUT = 8
LONG_PREFIX = "/slow/long-"
LIVE_VARS = {
    "api_project_dir": str(REPO / "tests" / "shop"),
    "api_asgi_app": "shop.web:api",
    "api_scheduler_jobs": "",
    "api_health_path": "/healthz",
    "api_ready_path": "/healthz",
    "api_release_hooks": ["python -m shop.migrate"],
    "api_processes": {"worker": "python -m shop.worker"},
    "api_long_requests": [{"path": LONG_PREFIX, "timeout": 20}],
    "nginx_proxy_timeout": f"{PROXY_TIMEOUT}s",
    "nginx_rate_limit_exempt": [f"10.231.{NET}.1/32"],
}


@pytest.fixture(scope="module")
def live(testhost_available) -> Iterator[ApiHost]:
    with bare_host("live", NET) as host, operator_host(host, "live.yml", ["api"], LIVE_VARS) as api_host:
        run = api_host.playbook("site.yml")
        assert run.returncode == 0, str(run)
        yield api_host


def timed_reads(host: ApiHost, path: str) -> tuple[dict, list[float]]:
    """The response headers, and when (seconds after the request) each read of the body returned
    data, as the bytes came off the TLS connection (undecoded)."""
    started = time.monotonic()
    with host.client() as client, client.stream("GET", path, extensions={"sni_hostname": host.server_name}) as response:
        assert response.status_code == 200, response.read()
        return dict(response.headers), [time.monotonic() - started for chunk in response.iter_raw() if chunk]


@pytest.mark.parametrize("kind", ["sse", "ndjson", "json"])
def test_events_arrive_as_they_are_made(live, kind):
    """8 events 0.5 s apart: at least 6 separate reads through TLS, the first within 1 s. SSE is
    sent as `text/event-stream; charset=utf-8`; the JSON stream is gzipped by nginx on the way."""
    headers, reads = timed_reads(live, f"/stream/{kind}?count=8&interval=0.5")
    print(f"{kind}: {len(reads)} reads at {[round(t, 2) for t in reads]}")
    assert len(reads) >= 6 and reads[0] < 1.0 and reads[-1] >= 3.0, reads
    if kind == "json":
        assert headers.get("content-encoding") == "gzip"


def slow_runs(host: ApiHost, tag: str) -> int:
    return host.get(f"/slow/{tag}/runs").json()["runs"]


def test_too_slow_gets_one_504_and_a_long_path_waits_longer(live):
    """Beyond nginx_proxy_timeout a request gets 504 once and its handler ran once (nginx does not
    send it again); on a path of api_long_requests the same wait is answered."""
    slow, long = secrets.token_hex(4), f"long-{secrets.token_hex(4)}"
    seconds = PROXY_TIMEOUT + 4

    def timed(path: str) -> tuple[int, float]:
        started = time.monotonic()
        status = live.get(path).status_code
        return status, time.monotonic() - started

    with ThreadPoolExecutor(2) as pool:
        too_slow = pool.submit(timed, f"/slow/{slow}?seconds={seconds}")
        waited = pool.submit(timed, f"{LONG_PREFIX}{long.removeprefix('long-')}?seconds={seconds}")
        (status, took), (long_status, long_took) = too_slow.result(), waited.result()
    print(f"too slow: {status} after {took:.1f} s; long path: {long_status} after {long_took:.1f} s")
    assert status == 504 and PROXY_TIMEOUT - 1 < took < PROXY_TIMEOUT + 3
    assert long_status == 200 and long_took >= seconds
    # The first request's handler has finished its sleep by now: one run, never a second.
    assert slow_runs(live, slow) == 1 and slow_runs(live, long) == 1
    log = live.log_records("/var/log/nginx/api.access.log", f"/slow/{slow}?")
    assert [record["upstream_status"] for record in log] == ["504"], log


def websocket(host: ApiHost):
    """A WebSocket to /ws/echo through nginx over TLS, trusting only the host's CA."""
    context = ssl.create_default_context(cafile=str(host.ca))
    return connect(f"wss://{host.server_name}/ws/echo", sock=socket.create_connection((host.address, 443), timeout=10),
                   ssl=context, open_timeout=10)


def test_a_websocket_echoes_and_reconnects_at_once_after_a_restart(live):
    with websocket(live) as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        restart = threading.Thread(target=live.sh, args=("systemctl restart api",))
        restart.start()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        closed_at = time.monotonic()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
    reconnected = wait_until(lambda: try_websocket(live), 10, "a new WebSocket", interval=0.05)
    took = time.monotonic() - closed_at
    restart.join()
    print(f"WebSocket closed with 1012, open again after {took:.2f} s")
    # The old workers exit once nginx has dropped their idle connections
    # (nginx_upstream_keepalive_timeout, 1 s); the new gunicorn boots in under half a second.
    assert reconnected == "again" and took < 2


def try_websocket(host: ApiHost) -> str | None:
    try:
        with websocket(host) as ws:
            ws.send("again")
            return ws.recv(timeout=10)
    except (OSError, ConnectionClosed, TimeoutError):
        return None


def test_a_stream_and_a_long_request_in_flight_live_through_a_restart(live):
    """40 events over 20 s and a 15 s request: `systemctl restart api` 3 s in, and both finish."""
    tag = secrets.token_hex(4)
    with ThreadPoolExecutor(2) as pool:
        stream = pool.submit(lambda: live.get("/stream/sse?count=40&interval=0.5"))
        request = pool.submit(lambda: live.get(f"{LONG_PREFIX}{tag}?seconds=15"))
        time.sleep(3)
        live.sh("systemctl restart api")
        events, answered = stream.result(), request.result()
    assert events.status_code == 200 and answered.status_code == 200
    assert [line for line in events.text.splitlines() if line] == [f"data: {n}" for n in range(40)]


def worker_log(host: ApiHost) -> list[tuple[str, str, int]]:
    code = ("import sqlite3\nfor row in sqlite3.connect('file:/var/lib/api/shop.db?mode=ro', uri=True)"
            ".execute('select event, release, pid from worker_log order by rowid'): print(*row)")
    return [(event, release, int(pid)) for event, release, pid in
            (line.split() for line in host.python(code).stdout.splitlines())]


def current_release(host: ApiHost) -> str:
    return host.sh("basename $(readlink /srv/api/current)").stdout.strip()


def test_the_background_process_runs_beside_the_api_and_moves_on_deploy(live):
    """It does its work (fulfils orders), stops cleanly on deploy.yml (SIGTERM: its stop is noted)
    and runs the new release once the API is ready."""
    old = current_release(live)
    assert live.sh("systemctl is-active api-worker && systemctl is-enabled api-worker").stdout.split() == [
        "active", "enabled"]
    order = live.request("POST", "/orders/apple").json()["id"]
    fulfilled = ("import sqlite3\nprint(sqlite3.connect('file:/var/lib/api/shop.db?mode=ro', uri=True)"
                 f".execute('select fulfilled from orders where id = {order}').fetchone()[0])")
    wait_until(lambda: live.python(fulfilled).stdout.strip() == "1", 10, "the worker to fulfil the order")
    before = worker_log(live)
    assert before[-1][:2] == ("started", old)

    run = live.playbook("deploy.yml", "-e", "api_version=3.2.0")
    assert run.returncode == 0, str(run)
    new = current_release(live)
    assert new != old and new.startswith("3.2.0-")
    after = worker_log(live)[len(before):]
    print(f"worker_log during deploy.yml: {after}")
    assert after[0] == ("stopped", old, before[-1][2])
    assert after[-1][:2] == ("started", new)
    main = live.unit("api-worker.service", "MainPID")["MainPID"]
    assert f"RELEASE_ID={new}" in live.sh(f"tr '\\0' '\\n' < /proc/{main}/environ").stdout.splitlines()
    # systemd's own account: it exited on SIGTERM, nothing had to be killed.
    journal = live.sh("journalctl -u api-worker -o cat --no-pager").stdout
    assert "Deactivated successfully" in journal and "Killing" not in journal, journal[-2000:]


def test_a_process_dropped_from_the_inventory_loses_its_unit(live):
    run = live.playbook("site.yml", "-e", json.dumps({"api_processes": {}}))
    assert run.returncode == 0, str(run)
    assert live.sh("systemctl list-unit-files --no-legend api-worker.service", check=False).stdout.strip() == ""
    assert live.sh("systemctl is-active api-worker", check=False).stdout.strip() in ("inactive", "unknown")
    assert worker_log(live)[-1][0] == "stopped"


def test_the_example_apps_consumer_does_the_work_its_post_queued(site):
    assert site.sh("systemctl is-active api-consumer").stdout.strip() == "active"
    queued = site.request("POST", "/tasks", json={"text": "three short words"})
    assert queued.status_code == 202, queued.text
    task = f"/tasks/{queued.json()['id']}"
    done = wait_until(lambda: (r := site.get(task).json())["status"] == "done" and r, 15, "the consumer")
    assert (done["words"], done["chars"]) == ("3", "17")
