"""The monitoring group on two hosts, provisioned once for the module by site.yml: a web host mon1
(api, scheduler, Redis, PostgreSQL with its backups) and a monitoring host mon2 (Prometheus, Alertmanager, the blackbox
exporter), with short scrape, evaluation and alert intervals. The test process runs the webhook
receiver Alertmanager notifies.

Every target is up; stopping api on the web host brings its alerts to the receiver within the time
the rules promise, and starting it again their resolution; from outside no exporter or metrics port
answers, from the monitoring host every one does.
"""

import dataclasses
import json
import shlex
import shutil
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from api_host import ApiHost, PlaybookRun
from e2e_support import REPO, TestHosts
from support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.monitoring, pytest.mark.timeout(900)]

NET = 151  # mon1 on 10.231.151.0/24, mon2 on 10.231.152.0/24
WEB, MONITOR = "mon1", "mon2"
SERVER_NAME = "mon.test"
# Alertmanager on mon2 reaches the controller at its end of mon2's link.
RECEIVER_ADDRESS = f"10.231.{NET + 1}.1"
# Short intervals, so an alert fires and resolves within seconds (the defaults are minutes).
SCRAPE, EVALUATION, DOWN_FOR, GROUP_WAIT, GROUP_INTERVAL = 2, 2, 10, 2, 4
# Scrape and evaluation happen in their own time; delivery over the controller's links.
SLACK = 6
# The exporter and metrics ports of the web host: node, nginx, the data and cache Redis, PostgreSQL, api, scheduler.
WEB_PORTS = {"node": 9100, "nginx": 9113, "redis data": 9121, "redis cache": 9122, "postgres": 9187,
             "api": 9180, "scheduler": 9181}
# The monitoring host's own listeners, loopback only: Prometheus, Alertmanager, the blackbox exporter.
MONITOR_PORTS = {"prometheus": 9090, "alertmanager": 9093, "blackbox": 9115}


def address(name: str) -> str:
    return f"10.231.{NET + int(name.removeprefix('mon')) - 1}.2"


@dataclass
class Notification:
    received: float  # time.monotonic() when it arrived
    body: dict


@dataclass
class Receiver:
    """Alertmanager's webhook receiver: every notification it POSTs, with the time it arrived."""

    server: ThreadingHTTPServer
    notifications: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{RECEIVER_ADDRESS}:{self.server.server_address[1]}/alerts"

    def since(self, started: float) -> list[Notification]:
        with self.lock:
            return [n for n in self.notifications if n.received >= started]

    def alert(self, started: float, status: str, alertname: str, **labels: str) -> Notification | None:
        """The first notification since `started` that carries this alert in this status."""
        for notification in self.since(started):
            for alert in notification.body.get("alerts", []):
                found = alert.get("labels", {})
                if (alert.get("status") == status and found.get("alertname") == alertname
                        and all(found.get(k) == v for k, v in labels.items())):
                    return notification
        return None


def start_receiver() -> Receiver:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with receiver.lock:
                receiver.notifications.append(Notification(time.monotonic(), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((RECEIVER_ADDRESS, 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(server)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return receiver


def write_inventory(hosts: TestHosts, webhook_url: str) -> Path:
    inventory = {"all": {
        "hosts": {name: {"ansible_host": address(name)} for name in (WEB, MONITOR)},
        "vars": {
            **hosts.inventory_vars(),
            "nginx_server_name": SERVER_NAME,
            "api_extra_env": {"SCHEDULER_TICK_SECONDS": 1},
            "monitoring_webhook_url": webhook_url,
            "monitoring_scrape_interval": f"{SCRAPE}s",
            "monitoring_scrape_timeout": f"{SCRAPE}s",
            "monitoring_evaluation_interval": f"{EVALUATION}s",
            "monitoring_down_for": f"{DOWN_FOR}s",
            "monitoring_group_wait": f"{GROUP_WAIT}s",
            "monitoring_group_interval": f"{GROUP_INTERVAL}s",
        },
        "children": {
            "api": {"hosts": {WEB: None}},
            "scheduler": {"hosts": {WEB: None}},
            "redis": {"hosts": {WEB: None}},
            "postgres": {"hosts": {WEB: None}},
            "monitoring": {"hosts": {MONITOR: None}},
        },
    }}
    path = hosts.dir / "monitoring.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


@dataclass
class Deployment:
    hosts: TestHosts
    web: ApiHost
    monitor: ApiHost  # the same SSH settings, to mon2
    receiver: Receiver
    site_run: PlaybookRun

    def prometheus(self, path: str) -> dict:
        """GET from Prometheus's HTTP API, which listens on the monitoring host's loopback only."""
        out = self.monitor.sh(f"curl -sS --fail --max-time 5 {shlex.quote('http://127.0.0.1:9090' + path)}").stdout
        return json.loads(out)["data"]

    def targets(self) -> list[dict]:
        return self.prometheus("/api/v1/targets?state=active")["activeTargets"]


@pytest.fixture(scope="module")
def deployment(testhost_available) -> Iterator[Deployment]:
    hosts = TestHosts(REPO / ".testhosts" / "mon", prefix="mon", net=NET)
    control_dir = Path(tempfile.mkdtemp(prefix="e2e-mon-", dir="/tmp"))
    web = None
    receiver = None
    try:
        hosts.down()
        started = time.monotonic()
        hosts.up(2)
        booted = time.monotonic() - started
        receiver = start_receiver()
        inventory = write_inventory(hosts, receiver.url)
        web = ApiHost.from_inventory(inventory, control_dir, name=WEB, ca=hosts.ca)
        monitor = dataclasses.replace(web, name=MONITOR, address=address(MONITOR),
                                      ssh_command=[*web.ssh_command[:-1], f"deploy@{address(MONITOR)}"])
        run = web.playbook("site.yml")
        print(f"2 hosts booted in {booted:.0f} s, site.yml on both: {run.seconds:.0f} s")
        assert run.returncode == 0, str(run)
        yield Deployment(hosts, web, monitor, receiver, run)
    finally:
        if receiver is not None:
            receiver.server.shutdown()
            receiver.server.server_close()
        if web is not None:
            web.close()
        shutil.rmtree(control_dir, ignore_errors=True)
        hosts.down()


def test_a_second_site_run_changes_nothing(deployment):
    run = deployment.web.playbook("site.yml")
    assert run.returncode == 0, str(run)
    changed = {host: counts.get("changed") for host, counts in run.recap.items()}
    assert changed == {WEB: 0, MONITOR: 0}, (run.tasks_with("changed"), str(run))


def test_the_monitoring_host_shows_every_target_up(deployment):
    expected = {("prometheus", MONITOR), ("alertmanager", MONITOR), ("node", WEB), ("node", MONITOR),
                ("nginx", WEB), ("api", WEB), ("scheduler", WEB), ("redis", WEB), ("postgres", WEB), ("site_health", WEB)}

    def all_up() -> list[dict] | None:
        targets = deployment.targets()
        found = {(t["labels"]["job"], t["labels"]["instance"]) for t in targets}
        return targets if found == expected and all(t["health"] == "up" for t in targets) else None

    try:
        targets = wait_until(all_up, 60, "every target up", interval=1)
    except AssertionError:
        shown = [(t["labels"]["job"], t["labels"]["instance"], t["health"], t.get("lastError", ""))
                 for t in deployment.targets()]
        raise AssertionError(f"targets not all up after 60 s: {shown}") from None
    assert len([t for t in targets if t["labels"]["job"] == "redis"]) == 2  # the data and the cache Redis
    # The metrics arrive, not only the scrapes: the data Redis's maxmemory the memory alert divides by.
    result = deployment.prometheus("/api/v1/query?query=" + "redis_memory_max_bytes%7Bredis%3D%22data%22%7D")["result"]
    assert [float(r["value"][1]) for r in result] == [256 * 1024 * 1024]
    probe = deployment.prometheus("/api/v1/query?query=probe_ssl_earliest_cert_expiry")["result"]
    assert probe and float(probe[0]["value"][1]) > time.time() + 300 * 86400
    # PostgreSQL's exporter logs in (peer, pg_monitor), and the first full backup site.yml took
    # recorded its success for node-exporter's textfile collector, which BackupTooOld reads.
    assert [r["value"][1] for r in deployment.prometheus("/api/v1/query?query=pg_up")["result"]] == ["1"]
    backups = deployment.prometheus("/api/v1/query?query=backup_last_success_timestamp_seconds")["result"]
    assert [(b["metric"]["kind"], b["metric"]["type"]) for b in backups] == [("pgbackrest", "full")]
    assert time.time() - 3600 < float(backups[0]["value"][1]) <= time.time()
    # And no alert fires on the healthy deployment.
    firing = [(a["labels"]["alertname"], a["labels"].get("instance")) for a in deployment.prometheus("/api/v1/alerts")["alerts"]
              if a["state"] == "firing"]
    assert firing == []


def port_answers_from_controller(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


def test_no_exporter_or_metrics_port_answers_from_outside(deployment):
    """From the controller nothing answers on these ports, neither on the web host nor on the
    monitoring host; from the monitoring host every exporter of the web host serves /metrics."""
    outside = {f"{name} on {WEB}": port for name, port in WEB_PORTS.items()}
    outside |= {f"{name} on {MONITOR}": port for name, port in MONITOR_PORTS.items()}
    # At once: a dropped connection attempt takes its whole timeout.
    with ThreadPoolExecutor(len(outside)) as pool:
        answers = dict(zip(outside, pool.map(
            lambda item: port_answers_from_controller(address(WEB if item[0].endswith(WEB) else MONITOR), item[1]),
            outside.items())))
    answering = [name for name, answered in answers.items() if answered]
    assert answering == []
    # The nginx exporter's source answers on the web host's loopback only.
    assert not port_answers_from_controller(address(WEB), 8081)
    script = "; ".join(f"curl -sS -o /dev/null -w '{name}=%{{http_code}}\\n' --max-time 5 http://{address(WEB)}:{port}/metrics"
                       for name, port in WEB_PORTS.items())
    codes = dict(line.split("=") for line in deployment.monitor.sh(script, check=False).stdout.split("\n") if "=" in line)
    assert codes == dict.fromkeys(WEB_PORTS, "200")


# What a stopped api on the web host fires: its public health route fails, its metrics target is down.
ALERTS_OF_A_STOPPED_API = {"HealthProbeFailed": {"instance": WEB}, "TargetDown": {"job": "api", "instance": WEB}}


def notified(receiver: Receiver, since: float, status: str, bound: float) -> dict[str, float]:
    """Seconds from `since` until each alert of a stopped api reached the webhook with `status`
    (waiting past `bound`, so that a late one is measured, not just missed)."""
    took = {}
    for name, labels in ALERTS_OF_A_STOPPED_API.items():
        notification = wait_until(lambda: receiver.alert(since, status, name, **labels), bound + 30,  # noqa: B023
                                  f"{name} {status} at the webhook", interval=0.2)
        took[name] = round(notification.received - since, 1)
    return took


def test_stopping_api_brings_its_alerts_to_the_webhook_in_time_and_starting_it_resolves_them(deployment):
    """The rules promise: a failed scrape or probe is seen within one scrape interval, the rule
    within one evaluation, it fires after monitoring_down_for (seen at the next evaluation), and
    Alertmanager notifies after group_wait; resolved after the next scrape, evaluation and
    group_interval."""
    receiver, web = deployment.receiver, deployment.web
    fire_bound = SCRAPE + EVALUATION + DOWN_FOR + EVALUATION + GROUP_WAIT + SLACK
    stopped = time.monotonic()
    try:
        # api.socket too: systemd would start api again for the next connection to the socket.
        web.sh("systemctl stop api.socket api.service")
        took = notified(receiver, stopped, "firing", fire_bound)
        print(f"firing at the webhook after {took} s (bound {fire_bound} s)")
        assert max(took.values()) <= fire_bound, took
    finally:
        started = time.monotonic()
        web.sh("systemctl start api")
    wait_until(lambda: web.get("/health").status_code == 200, 60, "api to answer again", interval=0.5)
    healthy = time.monotonic() - started
    resolve_bound = healthy + SCRAPE + EVALUATION + GROUP_INTERVAL + SLACK
    took = notified(receiver, started, "resolved", resolve_bound)
    print(f"resolved at the webhook after {took} s (api healthy after {healthy:.1f} s, bound {resolve_bound:.1f} s)")
    assert max(took.values()) <= resolve_bound, took
    # Every notification is Alertmanager's webhook format, naming the receiver.
    assert {n.body.get("receiver") for n in receiver.since(stopped)} == {"webhook"}
    assert all(datetime.fromisoformat(a["startsAt"].replace("Z", "+00:00")) for n in receiver.since(stopped)
               for a in n.body["alerts"])
