"""Several hosts, provisioned once for the module by site.yml: an lb (multi1) balancing over two web
hosts (multi2, multi3), Redis and a scheduler on multi4, a second scheduler on multi5.

Under continuous load through the lb (16 clients, GET and POST, every response checked): a rolling
deploy and a rolling rollback, a release that cannot start stopping the rollout at its first batch,
then a web host powered off and back on and the leader scheduler's host losing power.
"""

import dataclasses
import json
import shutil
import socket
import ssl
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml
from api_host import ApiHost, PlaybookRun
from e2e_support import REPO, TestHosts, broken_project
from load import LoadResult, Target, run_under_load
from support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.multihost, pytest.mark.timeout(900)]

NET = 131  # multi1..multi5 on 10.231.131.0/24 .. 10.231.135.0/24
LB, WEB, REDIS, SCHEDULERS = "multi1", ("multi2", "multi3"), "multi4", ("multi4", "multi5")
SERVER_NAME = "multi.test"
CONTROLLER = f"10.231.{NET}.1"  # the controller's end of the lb's link: where the load comes from
LOAD_CLIENTS = 16
LOAD_REQUESTS = 3000
LEASE_TTL = 10  # SCHEDULER_LEASE_TTL's default
TICK = 1  # SCHEDULER_TICK_SECONDS below
# As tests/e2e/conftest.py's SUITE_VARS: the example job ticks every second; the controller's many
# clients share one address, which the limits must not count as one abusive client.
EXTRA_VARS = {
    "api_extra_env": {"SCHEDULER_TICK_SECONDS": TICK},
    "nginx_rate_limit_exempt": ["127.0.0.0/8", "::1/128", f"{CONTROLLER}/32"],
}


def address(name: str) -> str:
    return f"10.231.{NET + int(name.removeprefix('multi')) - 1}.2"


@dataclass
class Cluster:
    hosts: TestHosts
    web: list[ApiHost]  # SSH as root, and the playbooks over the inventory
    redis_host: ApiHost  # the Redis host (redis-cli is there, not on the web hosts), as the API's Redis user
    site_run: PlaybookRun
    first_version: str

    def power(self, action: str, *args: str) -> None:
        """tools/testhost poweroff/poweron; then the session's SSH master connections (ours and
        Ansible's) are ended, so none is reused over a connection the host no longer knows."""
        self.hosts.run(action, *args)
        self.web[0].close()

    def ssh(self, name: str, command: str, check: bool = True) -> str:
        return self.hosts.ssh(name, command, check=check).stdout.strip()

    def playbook(self, playbook: str, *args: str) -> PlaybookRun:
        return self.web[0].playbook(playbook, *args)

    def target(self) -> Target:
        return Target(address(LB), SERVER_NAME, str(self.hosts.ca))

    def client(self) -> httpx.Client:
        """HTTPS to the lb, as a client of the site."""
        return httpx.Client(base_url=f"https://{address(LB)}", headers={"Host": SERVER_NAME}, timeout=30,
                            verify=ssl.create_default_context(cafile=str(self.hosts.ca)))

    def release(self, name: str) -> str:
        return self.ssh(name, "sudo -n readlink /srv/api/current")

    def version_on(self, name: str) -> str:
        """The version the API of a web host answers through its own socket (not through the lb)."""
        return json.loads(self.ssh(name, "sudo -n curl -sS --max-time 5 --unix-socket /run/api/api.sock "
                                         "http://localhost/health"))["version"]

    def leader(self) -> str:
        """The host whose scheduler holds the lease ("" while nobody does)."""
        lease = self.redis_host.redis("GET", "api:scheduler:leader")
        return json.loads(lease)["id"].split(":")[0] if lease else ""

    def ticks(self) -> list[str]:
        return self.redis_host.redis("LRANGE", "api:example:ticks", "0", "-1").split()


def write_inventory(hosts: TestHosts) -> Path:
    names = [LB, *WEB, *SCHEDULERS]
    inventory = {"all": {
        "hosts": {name: {"ansible_host": address(name)} for name in names},
        "vars": {
            **hosts.inventory_vars(),
            "nginx_server_name": SERVER_NAME,
            "api_release_hooks": ["python -m app.migrate"],
        },
        "children": {
            "lb": {"hosts": {LB: None}},
            "api": {"hosts": dict.fromkeys(WEB)},
            "redis": {"hosts": {REDIS: None}},
            "postgres": {"hosts": {REDIS: None}},
            "scheduler": {"hosts": dict.fromkeys(SCHEDULERS)},
        },
    }}
    path = hosts.dir / "cluster.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cluster(testhost_available) -> Iterator[Cluster]:
    hosts = TestHosts(REPO / ".testhosts" / "multi", prefix="multi", net=NET)
    control_dir = Path(tempfile.mkdtemp(prefix="e2e-multi-", dir="/tmp"))
    web: list[ApiHost] = []
    try:
        hosts.down()
        started = time.monotonic()
        hosts.up(5)
        booted = time.monotonic() - started
        inventory = write_inventory(hosts)
        web = [ApiHost.from_inventory(inventory, control_dir, name=name, ca=hosts.ca, extra_vars=EXTRA_VARS)
               for name in WEB]
        run = web[0].playbook("site.yml")
        print(f"5 hosts booted in {booted:.0f} s, site.yml on all of them: {run.seconds:.0f} s")
        assert run.returncode == 0, str(run)
        # The same SSH settings, to the Redis host (it is no api host, which from_inventory wants).
        redis_host = dataclasses.replace(web[0], name=REDIS, address=address(REDIS),
                                         ssh_command=[*web[0].ssh_command[:-1], f"deploy@{address(REDIS)}"])
        cluster = Cluster(hosts, web, redis_host, run, first_version="")
        cluster.first_version = cluster.version_on(WEB[0])
        yield cluster
    finally:
        for host in web:
            host.close()
        shutil.rmtree(control_dir, ignore_errors=True)
        hosts.down()


@dataclass
class LoadRun:
    result: LoadResult
    name: str  # the counter, or the notes' tag, the POSTs wrote to
    notes: bool
    started: float  # time.monotonic() when the load began


def under_load(cluster: Cluster, operation, min_requests: int = LOAD_REQUESTS,
               notes: bool = False) -> tuple[LoadRun, object]:
    """Keep-alive load through the lb: GET /health and POST /counters/<fresh name> (in Redis) or,
    with `notes`, POST /notes with a fresh tag (a row in PostgreSQL each); every response checked."""
    name = f"multi-{uuid.uuid4().hex[:12]}"
    posts = {"post_path": "/notes", "post_json": {"text": "rolling", "tag": name}} if notes else {"counter": name}
    started = time.monotonic()
    result, outcome = run_under_load(cluster.target(), operation, clients=LOAD_CLIENTS,
                                     min_requests=min_requests, **posts)
    print(f"load through the lb: {result.total} requests ({result.posts_ok} POSTs answered 2xx) by "
          f"{LOAD_CLIENTS} clients in {time.monotonic() - started:.0f} s, {len(result.failures)} failed, "
          f"versions {dict(result.versions)}")
    return LoadRun(result, name, notes, started), outcome


def counted_posts(cluster: Cluster, run: LoadRun) -> int:
    if run.notes:
        with cluster.client() as client:
            return client.get(f"/notes/count?tag={run.name}", extensions={"sni_hostname": SERVER_NAME}).json()["count"]
    return int(cluster.redis_host.redis("GET", f"api:counters:{run.name}") or 0)


def assert_no_failures(cluster: Cluster, run: LoadRun) -> None:
    result = run.result
    kinds = Counter(failure.split(":", 1)[0] for failure in result.failures)
    assert result.failures == [], (f"{len(result.failures)} of {result.total} requests failed "
                                   f"({dict(kinds)}); first: {result.failures[:5]}")
    assert result.total >= LOAD_REQUESTS
    # Nothing lost, nothing run twice: every 2xx POST incremented the counter (or inserted a row) exactly once.
    assert counted_posts(cluster, run) == result.posts_ok


def served_by(cluster: Cluster, name: str) -> int:
    """Requests the web host's nginx has logged (it logs each one the lb sent it)."""
    return len(cluster.web[WEB.index(name)].log_lines("/var/log/nginx/api.access.log"))


def port_open(cluster: Cluster, source: str, target: str, port: int) -> bool:
    """Whether a TCP connection from a host (or the controller) to target:port is accepted."""
    if source == "controller":
        try:
            socket.create_connection((target, port), timeout=3).close()
            return True
        except OSError:
            return False
    probe = f"timeout 3 bash -c 'exec 3<>/dev/tcp/{target}/{port}' 2>/dev/null && echo open || echo closed"
    return cluster.ssh(source, probe) == "open"


# ---------------------------------------------------------------- provisioning and the network


def test_site_yml_sets_up_every_host(cluster):
    recap = cluster.site_run.recap
    assert set(recap) == {LB, *WEB, *SCHEDULERS}, str(cluster.site_run)
    assert {r["failed"] + r["unreachable"] for r in recap.values()} == {0}
    for name in WEB:
        assert cluster.ssh(name, "systemctl is-active nginx api.socket api").split() == ["active"] * 3
    for name in SCHEDULERS:
        assert cluster.ssh(name, "systemctl is-active api-scheduler") == "active"
    assert cluster.ssh(REDIS, "systemctl is-active redis-server") == "active"
    # Each host runs what its groups say, and nothing else.
    assert cluster.ssh(LB, "systemctl is-active api api-scheduler redis-server", check=False).split() == ["inactive"] * 3
    assert cluster.ssh(SCHEDULERS[1], "systemctl is-active nginx api redis-server", check=False).split() == ["inactive"] * 3


def test_second_site_yml_run_changes_nothing_on_any_host(cluster):
    run = cluster.playbook("site.yml")
    print(f"site.yml again on the 5 hosts: {run.seconds:.0f} s")
    assert run.returncode == 0, str(run)
    changed = {host: recap["changed"] for host, recap in run.recap.items()}
    assert set(changed) == {LB, *WEB, *SCHEDULERS} and set(changed.values()) == {0}, (
        f"changed tasks: {run.tasks_with('changed')}\n{run}")


def test_lb_balances_over_both_web_hosts_and_passes_on_the_client_address(cluster):
    before = {name: served_by(cluster, name) for name in WEB}
    marker = uuid.uuid4().hex[:12]
    with cluster.client() as client:
        for _ in range(40):
            response = client.get(f"/health?m={marker}", extensions={"sni_hostname": SERVER_NAME})
            assert response.status_code == 200, response.text
    # nginx writes its access log in buffers flushed every second (nginx_access_log_buffer).
    wait_until(lambda: all(served_by(cluster, name) > before[name] for name in WEB), 10,
               "both web hosts to log requests from the lb", interval=0.5)
    after = {name: served_by(cluster, name) for name in WEB}
    print(f"40 requests through the lb: {({n: after[n] - before[n] for n in WEB})} per web host")
    log = cluster.web[0].log_records("/var/log/nginx/api.access.log", f"m={marker}")
    assert {record["remote_addr"] for record in log} == {CONTROLLER}


def reach(cluster: Cluster, target: str, port: int) -> dict[str, bool]:
    """Whether target:port accepts TCP from each web host, the other scheduler's host, the lb and
    the controller."""
    found = {name: port_open(cluster, name, target, port) for name in (*WEB, SCHEDULERS[1], LB, "controller")}
    print(f"TCP to {target}:{port}: {found}")
    return found


# The services' clients: the web and scheduler hosts; not the lb, not the world.
SERVICE_CLIENTS = {**dict.fromkeys((*WEB, SCHEDULERS[1]), True), LB: False, "controller": False}


def test_redis_is_reachable_from_web_and_scheduler_hosts_only(cluster):
    redis = address(REDIS)
    assert reach(cluster, redis, 6379) == SERVICE_CLIENTS
    # The cache Redis serves the API only: the web hosts.
    assert reach(cluster, redis, 6380) == {**SERVICE_CLIENTS, SCHEDULERS[1]: False}
    assert cluster.redis_host.redis("PING") == "PONG"
    # Without the password Redis refuses a host that may connect.
    assert "NOAUTH" in cluster.ssh(WEB[0], f"printf 'PING\\r\\n' | timeout 3 bash -c 'exec 3<>/dev/tcp/{redis}/6379; "
                                           "cat >&3; head -n 1 <&3'")


def test_postgresql_is_reachable_from_web_and_scheduler_hosts_only(cluster):
    assert reach(cluster, address(REDIS), 5432) == SERVICE_CLIENTS
    with cluster.client() as client:
        ready = client.get("/ready", extensions={"sni_hostname": SERVER_NAME})
    assert ready.status_code == 200 and ready.json()["checks"]["database"]["ok"], ready.text


def test_web_hosts_take_https_from_the_lb_only(cluster):
    for name in WEB:
        assert not port_open(cluster, "controller", address(name), 443)
        assert not port_open(cluster, "controller", address(name), 80)
        assert port_open(cluster, LB, address(name), 443)
        assert port_open(cluster, "controller", address(name), 22)
    assert port_open(cluster, "controller", address(LB), 443)


# ---------------------------------------------------------------- rolling deploy and rollback


def test_rolling_deploy_under_load_fails_no_request(cluster):
    version = f"{cluster.first_version}-multi"
    before = {name: cluster.release(name) for name in (*WEB, *SCHEDULERS)}
    # The POSTs insert rows in PostgreSQL while each batch runs the migration hook and switches.
    load, run = under_load(cluster, lambda: cluster.playbook("deploy.yml", "-e", f"api_version={version}"),
                           notes=True)
    batches = run.output.count("PLAY [Switch the hosts to the release, batch by batch]")
    print(f"deploy.yml over {len(before)} hosts, one per batch: {run.seconds:.0f} s, {batches} batches")
    assert run.returncode == 0, str(run)
    assert batches == len(before)
    assert_no_failures(cluster, load)
    for name in WEB:
        assert cluster.version_on(name) == version
    for name in (*WEB, *SCHEDULERS):
        assert cluster.release(name) != before[name]
    assert len({cluster.release(name) for name in (*WEB, *SCHEDULERS)}) == 1


def test_rolling_rollback_under_load_fails_no_request(cluster):
    load, run = under_load(cluster, lambda: cluster.playbook("rollback.yml"))
    print(f"rollback.yml: {run.seconds:.0f} s")
    assert run.returncode == 0, str(run)
    assert_no_failures(cluster, load)
    for name in WEB:
        assert cluster.version_on(name) == cluster.first_version


# ---------------------------------------------------------------- a release that cannot start


def test_batch_whose_release_cannot_start_stops_the_rollout(cluster, tmp_path):
    source = broken_project(tmp_path / "broken")
    before = {name: cluster.release(name) for name in (*WEB, *SCHEDULERS)}
    version = f"{cluster.first_version}-broken"
    load, run = under_load(cluster, lambda: cluster.playbook(
        "deploy.yml", "-e", f"api_project_dir={source}", "-e", f"api_version={version}"), min_requests=500)
    message = " ".join(run.output.split())
    print(f"deploy.yml of a release that cannot start: {run.seconds:.0f} s; failed requests through "
          f"the lb meanwhile: {len(load.result.failures)} of {load.result.total}; "
          f"{message.rpartition('msg: ')[2][:600]}")
    assert run.returncode != 0, str(run)
    first, *rest = (*WEB, *SCHEDULERS)
    assert f"did not come up on {first}" in message, str(run)
    assert f"The rollout stops at this batch ({first})" in message, str(run)
    assert f"Not touched, still serving the release they had: {', '.join(rest)}" in message, str(run)
    # The first batch switched back; the others were never switched.
    assert {name: cluster.release(name) for name in before} == before
    for name in WEB:
        assert cluster.version_on(name) == cluster.first_version
    assert counted_posts(cluster, load) == load.result.posts_ok


# ---------------------------------------------------------------- hosts going away
# Last: once, a command on a web host hung for a minute just after a power cut of another host.


def test_powered_off_web_host_is_routed_around_and_rejoins_by_itself(cluster):
    victim = WEB[1]
    off_seconds = 10

    def power_cycle() -> dict[str, float]:
        marks = {"off": time.monotonic()}
        cluster.power("poweroff", victim)
        marks["gone"] = time.monotonic()
        time.sleep(off_seconds)  # the lb serves with one web host meanwhile
        marks["on"] = time.monotonic()
        cluster.power("poweron", victim)
        marks["booted"] = time.monotonic()
        served = served_by(cluster, victim)
        wait_until(lambda: served_by(cluster, victim) > served + 50, 120,
                   f"the lb to send {victim} requests again", interval=0.5)
        marks["back"] = time.monotonic()
        return marks

    load, marks = under_load(cluster, power_cycle)
    failed_at = load.result.failed_at
    window = f"{failed_at[-1] - failed_at[0]:.1f} s" if failed_at else "-"
    print(f"{victim} powered off (clean shutdown {marks['gone'] - marks['off']:.1f} s), off {off_seconds} s, "
          f"booted in {marks['booted'] - marks['on']:.1f} s, served by the lb again "
          f"{marks['back'] - marks['booted']:.1f} s after boot; failed requests: {len(failed_at)} "
          f"within {window} ({Counter(f.split(':', 1)[0] for f in load.result.failures)})")
    # Once the host is gone the lb routes around it: nothing fails while it is off or coming back.
    assert [f for f, at in zip(load.result.failures, failed_at) if at > marks["gone"]] == []
    assert counted_posts(cluster, load) == load.result.posts_ok
    assert cluster.version_on(victim) == cluster.first_version


def test_leader_schedulers_host_losing_power_hands_over_within_the_lease_ttl(cluster):
    first, second = SCHEDULERS
    # The leader-to-be is the host without Redis (the Redis host going down is not survivable:
    # the kit has no Redis failover). Stopping the scheduler on the other releases its lease.
    cluster.ssh(first, "sudo systemctl stop api-scheduler")
    wait_until(lambda: cluster.leader() == second, 30, f"{second} to lead", interval=0.2)
    cluster.ssh(first, "sudo systemctl start api-scheduler")
    wait_until(lambda: len(cluster.ticks()) >= 3, 30, "the example job to run")
    last_before = cluster.ticks()[-1]

    cut = time.monotonic()
    cluster.power("poweroff", "--hard", second)
    wait_until(lambda: cluster.leader() == first, LEASE_TTL + 30, f"{first} to take over", interval=0.2)
    took_over = time.monotonic() - cut
    wait_until(lambda: len([t for t in cluster.ticks() if t > last_before]) >= 3, 30,
               f"3 ticks run by {first}", interval=0.5)
    ticks = cluster.ticks()
    times = [datetime.fromisoformat(t) for t in ticks if t >= last_before]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    print(f"{second} lost power; {first} leads {took_over:.1f} s later (lease TTL {LEASE_TTL} s); "
          f"largest gap between scheduled times run: {max(gaps):.0f} s")
    assert len(ticks) == len(set(ticks)), f"ran twice: {[t for t, n in Counter(ticks).items() if n > 1]}"
    # The new leader runs the latest scheduled time when it takes over, which is at most the TTL
    # (plus one acquire interval of at most 1 s) after the old one stopped renewing.
    assert max(gaps) <= LEASE_TTL + 1 + TICK, f"scheduled times skipped: {times}"

    cluster.power("poweron", second)
    wait_until(lambda: cluster.ssh(second, "systemctl is-active api-scheduler", check=False) == "active",
               60, f"api-scheduler on {second} after boot")
    assert cluster.leader() == first
