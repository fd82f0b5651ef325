"""The whole kit on one freshly booted host (issue #4), first part: site.yml from bare and once
more, then read-only checks: TLS, HTTP, services, sandboxing, SSH, the Redis ACL, hostile clients,
the firewall, settings and logs.

One host per session, provisioned once (fixtures `provisioning` and `site` in conftest.py). The
tests of the site modules build on each other (read-only checks, then load, then releases, then
faults, then bad input): this module, test_site_zero_downtime.py and test_site_faults.py run in
that order (SITE_MODULES in conftest.py), so run them as a whole (tests/e2e/test_site*.py).
Against an operator's host instead of e2e1: see E2E_INVENTORY in conftest.py.
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

import httpx
import pytest
from api_host import ApiHost
from e2e_support import raw_request, target
from support import wait_until

# The first test includes booting (and maybe building) the host and the first site.yml run.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SERVICES = ("nginx", "redis-server", "api.socket", "api", "api-scheduler")

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
    """Every TCP port the host listens on (any address), and Redis's and PostgreSQL's, tried from
    the controller."""
    listening = site.sh("ss -Htln | awk '{print $4}'").stdout.split()
    ports = {int(address.rsplit(":", 1)[1]) for address in listening} | {6379, 5432}

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
