"""The whole kit on one freshly booted host (issue #4): site.yml from bare, then TLS, services,
sandboxing, logs, zero-downtime restarts and deploys under load, a release that cannot start,
faults, and inventory mistakes.

One host per session, provisioned once; the tests run in this order and build on each other
(read-only checks, then load, then releases, then faults, then bad input), so run the module as a
whole. Against an operator's host instead of e2e1: see E2E_INVENTORY in conftest.py.
"""

import asyncio
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from e2e_support import ApiHost, broken_project, raw_request
from load import LoadResult, Target, run_under_load
from support import wait_until

# The first test includes booting (and maybe building) the host and the first site.yml run.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SERVICES = ("nginx", "redis-server", "api.socket", "api", "api-scheduler")
LOAD_CLIENTS = 16
LOAD_REQUESTS = 3000

# Mozilla's server side TLS guidelines 6.0, "intermediate" (ssl-config.mozilla.org/guidelines/6.0.json),
# in the shape sslyze's checker reads; sslyze 6.3.1 bundles only 5.7, which still allows DHE.
# "caddy" and "go" are required keys of that shape and not checked (the checker reads "iana").
MOZILLA_INTERMEDIATE_6_0 = {
    "certificate_curves": ["prime256v1", "secp384r1"],
    "certificate_signatures": ["sha256WithRSAEncryption", "ecdsa-with-SHA256", "ecdsa-with-SHA384",
                               "ecdsa-with-SHA512"],
    "certificate_types": ["ecdsa", "rsa"],
    "ciphers": {
        "iana": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                 "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                 "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                 "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"],
        "openssl": ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
                    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
                    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"],
        "caddy": [],
        "go": [],
    },
    "ciphersuites": ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"],
    "dh_param_size": 2048,
    "ecdh_param_size": 256,
    "hsts_min_age": 63072000,
    "maximum_certificate_lifespan": 366,
    "ocsp_staple": True,
    "recommended_certificate_lifespan": 90,
    "rsa_key_size": 2048,
    "server_preferred_order": False,
    "tls_curves": ["X25519MLKEM768", "X25519", "prime256v1", "secp384r1"],
    "tls_versions": ["TLSv1.2", "TLSv1.3"],
}


def target(site: ApiHost) -> Target:
    return Target(site.address, site.server_name, str(site.ca))


@dataclass
class LoadRun:
    result: LoadResult
    counter: str  # the counter this run's POSTs incremented


def under_load(site: ApiHost, operation, **options) -> tuple[LoadRun, object]:
    """Mixed keep-alive load through nginx/TLS: GET /health and POST /counters/<fresh name>."""
    counter = f"e2e-{uuid.uuid4().hex[:12]}"
    result, outcome = run_under_load(target(site), operation, counter=counter, clients=LOAD_CLIENTS,
                                     min_requests=LOAD_REQUESTS, **options)
    print(f"load: {result.total} requests ({result.posts_ok} POSTs answered 2xx) by {LOAD_CLIENTS} "
          f"clients, {len(result.failures)} failed, versions {dict(result.versions)}")
    return LoadRun(result, counter), outcome


def retried_posts(site: ApiHost, counter: str, answered: int) -> list[dict]:
    """nginx access log lines of POSTs to the counter that nginx sent upstream more than once,
    once nginx's buffered log holds a line for each of the `answered` POSTs."""

    def logged() -> list[dict]:
        found = site.log_records("/var/log/nginx/api.access.log", f"/counters/{counter}")
        return found if len(found) >= answered else []

    records = wait_until(logged, 10, f"nginx's access lines of {answered} POSTs") if answered else []
    return [r for r in records if r["method"] == "POST" and "," in r["upstream_status"]]


def assert_no_failures(site: ApiHost, run: LoadRun) -> None:
    result = run.result
    assert result.total >= LOAD_REQUESTS
    kinds = Counter(failure.split(":", 1)[0] for failure in result.failures)
    assert result.failures == [], (f"{len(result.failures)} of {result.total} requests failed "
                                   f"({dict(kinds)}); first: {result.failures[:5]}")
    # Nothing lost, nothing twice: every 2xx POST incremented the counter exactly once.
    assert int(site.redis("GET", f"api:counters:{run.counter}")) == result.posts_ok
    assert retried_posts(site, run.counter, result.posts_ok) == []


def workers(site: ApiHost) -> tuple[int, set[int]]:
    """(gunicorn master, its worker processes)."""
    main = int(site.unit("api.service", "MainPID")["MainPID"])
    children = site.sh(f"ps -o pid= --ppid {main} || true").stdout.split()
    return main, {int(pid) for pid in children}


def current_release(site: ApiHost) -> str:
    return site.sh("readlink /srv/api/current").stdout.strip()


def running_releases(site: ApiHost) -> dict[str, str]:
    """RELEASE_ID in the environment each service was started with."""
    script = ("for unit in api api-scheduler; do pid=$(systemctl show -p MainPID --value $unit); "
              "echo $unit $(tr '\\0' '\\n' < /proc/$pid/environ | sed -n 's/^RELEASE_ID=//p'); done")
    return dict(line.split() for line in site.sh(script).stdout.splitlines())


# ---------------------------------------------------------------- provisioning


def test_site_yml_provisions_a_bare_host(provisioning):
    run = provisioning.run
    print(f"site.yml from bare: {run.seconds:.0f} s, recap {run.recap}")
    assert run.returncode == 0, str(run)
    recap = run.recap[provisioning.host]
    assert recap["failed"] == recap["unreachable"] == 0, str(run)
    if provisioning.local:
        assert provisioning.bare, "the test host was not bare before site.yml"
        assert recap["changed"] > 0


def test_second_site_yml_run_changes_nothing(site):
    run = site.playbook("site.yml")
    print(f"site.yml again: {run.seconds:.0f} s")
    assert run.returncode == 0, str(run)
    changed = {host: recap["changed"] for host, recap in run.recap.items()}
    assert site.name in changed and set(changed.values()) == {0}, (
        f"changed tasks: {run.tasks_with('changed')}\n{run}")


# ---------------------------------------------------------------- read-only checks


def test_services_are_active_and_enabled(site):
    units = " ".join(SERVICES)
    active = site.sh(f"systemctl is-active {units}", check=False).stdout.split()
    enabled = site.sh(f"systemctl is-enabled {units}", check=False).stdout.split()
    assert dict(zip(SERVICES, active)) == dict.fromkeys(SERVICES, "active")
    assert dict(zip(SERVICES, enabled)) == dict.fromkeys(SERVICES, "enabled")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_health_over_tls_with_the_kits_ca(site, version):
    response = raw_request(site.address, site.server_name, "/health", tls_name=site.server_name,
                           ca=site.ca, version=version)
    assert response.tls_version == version.name.replace("v1_", "v1.")
    assert response.status == 200
    assert json.loads(response.body)["status"] == "ok"


def test_http_redirects_to_https(site):
    response = raw_request(site.address, site.server_name, "/health?probe=1")
    assert response.status == 301
    assert response.headers["location"] == f"https://{site.server_name}/health?probe=1"


def test_unknown_tls_name_is_refused(site):
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|unrecognized name"):
        raw_request(site.address, "other.test", "/health", tls_name="other.test", ca=site.ca)


@pytest.mark.parametrize("path", ["/", "/health"])
def test_unknown_host_is_refused(site, path):
    """Requests naming another site get no answer (444) or an error, on both ports, even when
    the TLS handshake was made for the API's name."""
    over_tls = raw_request(site.address, "other.test", path, tls_name=site.server_name, ca=site.ca)
    plain = raw_request(site.address, "other.test", path)
    for response in (over_tls, plain):
        assert response.status is None or response.status >= 400, (
            f"Host: other.test {path} -> {response.status}\n{response.body[:300]}")


def test_hsts_and_no_nginx_version(site):
    api = site.get("/health")
    assert api.headers["strict-transport-security"] == "max-age=63072000"
    nginx_pages = {
        "301 on port 80": raw_request(site.address, site.server_name, "/"),
        "404 on port 80": raw_request(site.address, site.server_name, "/.well-known/acme-challenge/none"),
        "413 on 443": raw_request(site.address, site.server_name, "/cache/big", tls_name=site.server_name,
                                  ca=site.ca, method="PUT", content_length=50 * 1024 * 1024),
    }
    assert [p.status for p in nginx_pages.values()] == [301, 404, 413]
    assert nginx_pages["413 on 443"].headers["strict-transport-security"] == "max-age=63072000"
    for what, page in {"API response": api, **nginx_pages}.items():
        assert page.headers["server"] == "nginx", what
        body = page.text if isinstance(page, httpx.Response) else page.body
        assert not re.search(r"nginx/\d", body), f"{what} shows the nginx version:\n{body}"


# One of the trust stores sslyze bundles holds a root with a non-positive serial number.
@pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
def test_tls_is_mozilla_intermediate(site):
    """sslyze against Mozilla's intermediate profile, trusting the kit's CA (not skipping the
    certificate checks)."""
    from sslyze import (ScanCommandsExtraArguments, Scanner, ServerNetworkLocation,
                        ServerScanRequest, ServerScanStatusEnum)
    from sslyze.mozilla_tls_profile.tls_config_checker import (
        SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER, ServerNotCompliantWithTlsConfiguration,
        TlsConfigurationAsJson, check_server_against_tls_configuration)
    from sslyze.plugins.certificate_info.implementation import CertificateInfoExtraArgument

    scanner = Scanner()
    scanner.queue_scans([ServerScanRequest(
        server_location=ServerNetworkLocation(site.server_name, 443, site.address),
        scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=site.ca)),
    )])
    (result,) = scanner.get_results()
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    try:
        check_server_against_tls_configuration(result, TlsConfigurationAsJson(**MOZILLA_INTERMEDIATE_6_0))
    except ServerNotCompliantWithTlsConfiguration as error:
        pytest.fail(f"not Mozilla intermediate (6.0): {error.issues}", pytrace=False)


def test_health_shows_the_fast_runtime_and_every_worker_id(site):
    count = int(site.env_setting("API_WORKERS"))

    async def sample() -> list[dict]:
        # Concurrent connections spread over nginx's upstream connections and so over the workers.
        async with target(site).client() as client:
            responses = await asyncio.gather(*(client.get("/health", extensions=target(site).extensions())
                                               for _ in range(32)))
        return [r.json() for r in responses]

    seen: dict[int, set[int]] = {}

    def all_seen() -> bool:
        for body in asyncio.run(sample()):
            assert body["runtime"] == {"loop": "uvloop", "http": "httptools"}
            seen.setdefault(body["worker_id"], set()).add(body["pid"])
        return set(seen) == set(range(count))

    wait_until(all_seen, 60, f"worker ids 0..{count - 1} in /health", interval=0)
    assert all(len(pids) == 1 for pids in seen.values()), f"worker ids shared by pids: {seen}"


def test_units_are_sandboxed(site):
    for unit in ("api.service", "api-scheduler.service"):
        out = site.sh(f"systemd-analyze security --no-pager {unit}").stdout
        exposure = float(re.search(rf"Overall exposure level for {re.escape(unit)}: ([\d.]+)", out)[1])
        assert exposure <= 2.0, f"{unit}: exposure {exposure}\n{out}"


def test_nginx_is_sandboxed_and_still_reloads_and_rotates_its_logs(site):
    out = site.sh("systemd-analyze security --no-pager nginx.service").stdout
    exposure = float(re.search(r"Overall exposure level for nginx.service: ([\d.]+)", out)[1])
    print(f"nginx.service exposure {exposure}")
    assert exposure <= 4.0, out
    main = site.unit("nginx.service", "MainPID")["MainPID"]
    site.sh("systemctl reload nginx && logrotate -f /etc/logrotate.d/nginx")
    marker = f"/health?rotated={uuid.uuid4().hex[:8]}"
    wait_until(lambda: site.get(marker).status_code == 200 and site.log_lines(
        "/var/log/nginx/api.access.log", marker.split("=")[1]), 20, "nginx to log into its new file")
    assert site.unit("nginx.service", "MainPID", "ActiveState") == {"MainPID": main, "ActiveState": "active"}


def test_ssh_takes_keys_only_and_no_root(site):
    effective = dict(line.split(" ", 1) for line in site.sh("sshd -T").stdout.splitlines() if " " in line)
    expected = {"permitrootlogin": "no", "passwordauthentication": "no", "kbdinteractiveauthentication": "no",
                "x11forwarding": "no", "allowtcpforwarding": "no", "allowagentforwarding": "no",
                "permittunnel": "no"}
    assert {key: effective.get(key) for key in expected} == expected


def test_the_apps_redis_user_cannot_administer_redis(site):
    assert site.redis("SET", "api:e2e-acl", "1") == "OK"
    for command in (["FLUSHALL"], ["CONFIG", "GET", "maxmemory"], ["KEYS", "*"], ["SCRIPT", "FLUSH"],
                    ["SET", "other:e2e-acl", "1"]):
        assert site.redis(*command).startswith("NOPERM"), command
    assert site.redis("GET", "api:e2e-acl") == "1"


def test_hostile_json_and_head_probes_through_nginx(site):
    for body in (b'{"value": "x", "ttl": NaN}', b'{"value": "\\ud800"}', b"[" * 5000 + b"]" * 5000,
                 b'{"value": "' + b"y" * 200_000 + b'"}'):
        response = site.request("PUT", "/cache/e2e-hostile", content=body,
                                headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500 and len(response.content) < 4096, response.text[:300]
    for path in ("/health", "/ready"):
        head = site.request("HEAD", path)
        assert head.status_code == 200 and head.content == b""


def test_one_request_id_from_nginx_through_the_app(site):
    """nginx's access line is the request's record (the app's own is off by default); a line the
    app logs while serving the request carries the same id."""
    rid = f"e2e-{uuid.uuid4().hex[:12]}"
    site.request("PUT", "/cache/e2e-rid", json={"value": "x"})
    response = site.request("DELETE", "/cache/e2e-rid", headers={"x-request-id": rid})
    assert response.status_code == 204 and response.headers["x-request-id"] == rid
    nginx = wait_until(lambda: site.log_records("/var/log/nginx/api.access.log", rid), 10, "nginx's access line")
    record = nginx[0]
    assert record["request_id"] == rid and record["status"] == 204
    # Each time is the difference of two millisecond readings (request_time of the cached wall
    # clock, upstream_response_time of the monotonic one): either may be 1 ms off, so request_time
    # can read up to 2 ms below the upstream's time it contains.
    assert float(record["request_time"]) + 0.002 > float(record["upstream_response_time"]) >= 0
    app = wait_until(lambda: site.sh(f"journalctl -u api -o cat --no-pager | grep -h '{rid}' || true").stdout,
                     10, "the app's line about the deletion")
    line = json.loads(app.splitlines()[0])
    assert line["request_id"] == rid and line["msg"] == "cache entry deleted"
    assert "vmkit.access" not in site.sh("journalctl -u api -o cat --no-pager | tail -200").stdout


def p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99) - 1]


def probe_latencies(site: ApiHost, count: int) -> list[float]:
    """Sequential keep-alive requests of a cheap route that goes through the app and Redis."""
    seconds = []
    with site.client() as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.get("/cache/e2e-victim", extensions={"sni_hostname": site.server_name})
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 404
    return seconds


@contextmanager
def another_client_address(site: ApiHost, provisioning) -> Iterator[str]:
    """A second address on the controller's end of the test host's link: a client that is not
    the (rate-limit exempt) controller."""
    if not provisioning.local:
        pytest.skip("needs a second address on the controller's end of the test host's link")
    address, link = site.address.rsplit(".", 1)[0] + ".3", f"ve-{site.name}"
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", link], check=True)
    try:
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", link], check=False)


def test_one_address_cannot_hold_all_of_nginxs_connections(site, provisioning):
    with another_client_address(site, provisioning) as client, ExitStack() as sockets:
        refused = 0
        for _ in range(300):
            try:
                sock = socket.create_connection((site.address, 443), timeout=5, source_address=(client, 0))
                sockets.enter_context(sock)
            except OSError:
                refused += 1
        print(f"300 connections from one address: {refused} refused")
        assert refused == 300 - 256
        assert site.get("/health").status_code == 200  # another address is served meanwhile


def test_an_abusive_client_within_its_limits_leaves_the_others_fast(site, provisioning):
    """A client on an address of its own asks for the costly /large-response?kb=4096 with gzip,
    within the general rate: its own zone lets one through every 30 seconds and answers the rest
    429 at once, so the other clients keep being served. Their p99, idle and under the abuse, is
    printed for the notes, not asserted: on this shared 2-core machine the idle p99 alone moved
    between 4 and 18 ms from run to run (timed assertions belong in a benchmark)."""
    with another_client_address(site, provisioning) as abuser:
        idle = p99(probe_latencies(site, 400))
        outcomes: Counter = Counter()
        stop = asyncio.Event()

        async def abuse() -> None:
            transport = httpx.AsyncHTTPTransport(local_address=abuser,
                                                 verify=ssl.create_default_context(cafile=str(site.ca)))
            async with httpx.AsyncClient(transport=transport, base_url=f"https://{site.address}",
                                         headers={"Host": site.server_name, "Accept-Encoding": "gzip"},
                                         timeout=60) as client:
                async def one_connection() -> None:
                    while not stop.is_set():
                        response = await client.get("/large-response", params={"kb": 4096},
                                                    extensions={"sni_hostname": site.server_name})
                        outcomes[(response.status_code, response.headers.get("content-encoding"))] += 1
                        await asyncio.sleep(0.1)  # 4 x 10 r/s: within the general 50 r/s

                await asyncio.gather(*(one_connection() for _ in range(4)))

        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_until_complete, args=(abuse(),), daemon=True)
        thread.start()
        try:
            time.sleep(2)
            loaded = p99(probe_latencies(site, 400))
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(120)
            loop.close()
    print(f"p99 idle {idle * 1000:.1f} ms, under abuse {loaded * 1000:.1f} ms ({loaded / idle:.1f}x); "
          f"abuser got {dict(outcomes)}")
    # The costly zone: two at once (rate + burst 1) and one per 30 s after that, compressed by
    # nginx; everything else the abuser asked for was refused before it reached a worker.
    assert 1 <= outcomes[(200, "gzip")] <= 3
    assert outcomes[(429, None)] == sum(outcomes.values()) - outcomes[(200, "gzip")] > 10


def test_only_ssh_http_https_are_reachable(site):
    """Every TCP port the host listens on (any address), and Redis's, tried from the controller."""
    listening = site.sh("ss -Htln | awk '{print $4}'").stdout.split()
    ports = {int(address.rsplit(":", 1)[1]) for address in listening} | {6379}

    def reachable(port: int) -> bool:
        try:
            socket.create_connection((site.address, port), timeout=3).close()
            return True
        except OSError:
            return False

    with ThreadPoolExecutor(len(ports)) as pool:
        open_ports = {port for port, ok in zip(ports, pool.map(reachable, ports)) if ok}
    assert open_ports == {22, 80, 443}, f"listening: {sorted(ports)}"


def test_settings_are_private_and_the_app_user_cannot_log_in(site):
    assert site.sh("stat -c '%a %U %G' /etc/api/api.env").stdout.split() == ["640", "root", "api"]
    shell = site.sh("getent passwd api | cut -d: -f7").stdout.strip()
    assert shell in ("/usr/sbin/nologin", "/bin/false")


def test_api_logs_json_lines_with_worker_id(site):
    """Everything the running service wrote. Only this run of it: gunicorn prints the bare message
    of a worker's boot error to stderr, so a broken release deployed earlier leaves plain lines."""
    invocation = site.unit("api.service", "InvocationID")["InvocationID"]
    out = site.sh(f"journalctl _SYSTEMD_INVOCATION_ID={invocation} -o cat --no-pager").stdout
    lines = [line for line in out.splitlines() if line.strip()]
    not_json = [line for line in lines if not line.startswith("{")]
    assert not_json == [], f"{len(not_json)} of {len(lines)} lines are not JSON: {not_json[:5]}"
    records = [json.loads(line) for line in lines]
    started = [r for r in records if r.get("logger") == "vmkit.probes" and r["msg"] == "started"]
    assert started and all(isinstance(r.get("worker_id"), int) for r in started)


# ---------------------------------------------------------------- zero downtime under load


def test_restart_under_load_fails_no_request(site):
    before, _ = workers(site)
    run, _ = under_load(site, lambda: site.sh("systemctl restart api"))
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
    load, run = under_load(site, lambda: site.playbook("deploy.yml", "-e", f"app_version={version}"))
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

    run = site.playbook("deploy.yml", "-e", f"app_project_dir={source}",
                        "-e", f"app_version={first_release['version']}-broken")
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


# ---------------------------------------------------------------- faults


def test_killed_worker_comes_back_with_its_id_within_5_seconds(site):
    """The id of each live worker is read from its "worker started" log line; a SIGKILLed worker's
    replacement must log the same id."""
    out = site.python(KILL_WORKER, timeout=60).stdout
    report = json.loads(out)
    print(f"worker kill: {report}")
    assert report["replacement"] is not None, f"no replacement for worker {report['worker_id']}: {report}"
    assert report["seconds"] <= 5, report
    main, alive = workers(site)
    assert report["replacement"] in alive and report["victim"] not in alive


def test_report_failures_when_a_worker_is_killed_under_load(site):
    """Not a promise of the kit (a killed worker drops what it holds): the figure for the notes."""
    _, before = workers(site)
    run, _ = under_load(site, lambda: site.sh(f"kill -9 {min(before)}"))
    kinds = Counter(failure.split(":", 1)[0] for failure in run.result.failures)
    print(f"kill -9 of a worker under load: {len(run.result.failures)} of {run.result.total} failed "
          f"({dict(kinds)})")
    wait_until(lambda: len(workers(site)[1]) == len(before), 30, "the killed worker's replacement")


KILL_WORKER = r"""
import json, os, signal, subprocess, time

def sh(*args):
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout

def started(cursor=None):
    args = ['journalctl', '_SYSTEMD_UNIT=api.service', '-o', 'cat', '--no-pager']
    args += ['--after-cursor', cursor] if cursor else ['_SYSTEMD_INVOCATION_ID=' + invocation]
    out = {}
    for line in sh(*args).splitlines():
        if '"worker started"' in line:
            record = json.loads(line)
            out[record['pid']] = record['worker_id']
    return out

main = int(sh('systemctl', 'show', '-p', 'MainPID', '--value', 'api.service'))
invocation = sh('systemctl', 'show', '-p', 'InvocationID', '--value', 'api.service').strip()
children = {int(p) for p in sh('ps', '-o', 'pid=', '--ppid', str(main)).split()}
ids = started()
victim = min(children)
worker_id = ids[victim]
cursor = sh('journalctl', '-n', '0', '--show-cursor', '--no-pager').split('cursor: ')[1].strip()
os.kill(victim, signal.SIGKILL)
killed = time.monotonic()
replacement = None
while replacement is None and time.monotonic() - killed < 15:
    replacement = next((pid for pid, wid in started(cursor).items() if wid == worker_id and pid != victim), None)
    time.sleep(0.05)
print(json.dumps({'victim': victim, 'worker_id': worker_id, 'replacement': replacement,
                  'seconds': round(time.monotonic() - killed, 2)}))
"""


def test_killed_master_is_restarted_by_systemd(site):
    before = site.unit("api.service", "MainPID", "NRestarts")
    site.sh(f"kill -9 {before['MainPID']}")

    def restarted() -> dict | None:
        now = site.unit("api.service", "MainPID", "NRestarts", "ActiveState")
        return now if now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"]) else None

    after = wait_until(restarted, 30, "api.service to run a new gunicorn master", interval=0.2)
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert site.health()["status"] == "ok"


def ticks(site: ApiHost) -> list[str]:
    """What the example job itself wrote: one entry per run, its scheduled time."""
    return site.redis("LRANGE", "api:example:ticks", "0", "-1").split()


def test_killed_scheduler_resumes_without_running_a_tick_twice(site):
    before = site.unit("api-scheduler.service", "MainPID")["MainPID"]
    wait_until(lambda: ticks(site), 30, "the example job to run")
    site.sh(f"kill -9 {before}")

    def restarted() -> bool:
        now = site.unit("api-scheduler.service", "MainPID", "ActiveState")
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", before)

    wait_until(restarted, 30, "systemd to restart api-scheduler", interval=0.2)
    # Whatever is written from here on, the new process wrote; it leads once the dead leader's
    # lease has expired (SCHEDULER_LEASE_TTL).
    last_before = ticks(site)[-1]
    wait_until(lambda: len([t for t in ticks(site) if t > last_before]) >= 3, 60,
               "the example job to run 3 times in the new scheduler", interval=0.5)
    written = ticks(site)
    assert len(written) == len(set(written)), f"ticks ran twice: {[t for t, n in Counter(written).items() if n > 1]}"
    for job in site.get("/jobs").json()["jobs"]:
        scheduled = [run["scheduled"] for run in job["recent_runs"]]
        assert len(scheduled) == len(set(scheduled)), f"{job['id']} ran a time twice: {scheduled}"
    wait_until(lambda: site.get("/ready").status_code == 200, 30, "/ready after the scheduler restart")


def test_redis_outage_degrades_and_recovers_without_restarting_api(site):
    """Each Redis down in turn: the routes that need it answer 503 with a JSON body, the others
    keep working, and everything is back once it is, without restarting api."""
    main = site.unit("api.service", "MainPID")["MainPID"]
    site.sh("systemctl stop redis-server")
    try:
        assert site.get("/health").status_code == 200
        assert site.get("/ready").status_code == 503
        counter = site.request("POST", "/counters/e2e-outage")
        assert counter.status_code == 503 and "detail" in counter.json()
        # The cache is another server.
        assert site.request("PUT", "/cache/e2e-outage", json={"value": "up"}).status_code == 200
    finally:
        site.sh("systemctl start redis-server")
    site.sh("systemctl stop redis-server@cache")
    try:
        assert site.get("/ready").status_code == 503
        cache = site.get("/cache/e2e-outage")
        assert cache.status_code == 503 and "detail" in cache.json()
        assert site.request("POST", "/counters/e2e-outage").status_code == 200
    finally:
        site.sh("systemctl start redis-server@cache")
    wait_until(lambda: site.get("/ready").status_code == 200, 60, "/ready after Redis is back", interval=0.5)
    assert site.request("PUT", "/cache/e2e-outage", json={"value": "back", "ttl": 60}).status_code == 200
    assert site.get("/cache/e2e-outage").json()["value"] == "back"
    assert site.unit("api.service", "MainPID")["MainPID"] == main


def test_site_yml_after_the_faults_changes_nothing(site):
    """systemd repaired every fault above, so the host is still what site.yml describes."""
    run = site.playbook("site.yml")
    print(f"site.yml after the faults: {run.seconds:.0f} s")
    assert run.returncode == 0, str(run)
    assert {recap["changed"] for recap in run.recap.values()} == {0}, (
        f"changed tasks: {run.tasks_with('changed')}\n{run}")


def test_no_secret_in_the_logs(site):
    """The Redis password never leaves /etc/api/api.env: not in the journal of the services (all
    fields), not in nginx's logs. Counted on the host, so the password never reaches this side."""
    counts = site.python(SECRET_IN_LOGS, timeout=300).stdout.split()
    # The first count proves the search finds the password where it is.
    assert counts == ["1", "0", "0"], f"password found in (api.env, journal, nginx logs): {counts}"


SECRET_IN_LOGS = r"""
import glob, shlex, subprocess
from urllib.parse import unquote, urlsplit
for line in open('/etc/api/api.env'):
    if line.startswith('REDIS_URL='):
        secret = unquote(urlsplit(shlex.split(line.split('=', 1)[1])[0]).password)
assert len(secret) >= 12
env_file = open('/etc/api/api.env').read().count(secret)
journal = subprocess.run(['journalctl', '-u', 'api', '-u', 'api-scheduler', '-u', 'nginx', '-u', 'api.socket',
                          '-o', 'verbose', '--no-pager'], capture_output=True, text=True, check=True).stdout
nginx = ''.join(open(f, errors='replace').read() for f in glob.glob('/var/log/nginx/*.log'))
print(min(env_file, 1), journal.count(secret), nginx.count(secret))
"""


# ---------------------------------------------------------------- inventory mistakes


FINGERPRINT = "find /etc /srv -xdev -printf '%p %M %U %G %s %T@ %l\\n' | sort | sha256sum"


@pytest.mark.parametrize("override, named", [
    ({"nginx_server_name": ""}, ["nginx_server_name"]),
    ({"nginx_tls_mode": "files"}, ["nginx_tls_cert_file", "nginx_tls_key_file"]),
], ids=["missing-server-name", "files-mode-without-cert"])
def test_bad_inventory_fails_first_and_changes_nothing(site, override, named):
    before = site.sh(FINGERPRINT).stdout
    run = site.playbook("site.yml", "-e", json.dumps(override))
    assert run.returncode != 0, str(run)
    assert run.tasks == ["Validate the inventory"], str(run)
    assert (run.recap[site.name]["failed"], run.recap[site.name]["ok"]) == (1, 0), str(run)
    failure = " ".join(run.output.split("TASK [Validate the inventory]")[1].split())
    for variable in named:
        assert variable in failure, str(run)
    assert site.sh(FINGERPRINT).stdout == before
