"""nginx_tls_mode=acme end to end, offline (issue #12): Debian's pebble (a test ACME CA) and
pebble-challtestsrv (its DNS, answering every name with the test host's address) run on the
controller; a fresh host of this module's own gets its certificate from pebble over HTTP-01
through the kit's /.well-known/acme-challenge/ location. Then a second site.yml, a forced renewal
under load, and an ACME server that does not answer. The tests run in order and build on each other.
"""

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from api_host import ApiHost
from e2e_support import REPO, bare_host
from load import Target, run_under_load
from support import stop_process, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

NET = 141
CONTROLLER = f"10.231.{NET}.1"  # the host's gateway: pebble listens there, on the host's link only
HOST_ADDRESS = f"10.231.{NET}.2"
ACME_PORT, MANAGEMENT_PORT, DNS_PORT, DNS_MANAGEMENT_PORT = 14000, 15000, 8053, 8055
DIRECTORY = f"https://{CONTROLLER}:{ACME_PORT}/dir"
LIVE_CERT = "/etc/letsencrypt/live/{name}/fullchain.pem"
LOAD_CLIENTS = 16
LOAD_REQUESTS = 3000


@dataclass
class Pebble:
    directory: str
    listener_ca: Path  # what certbot on the host must trust to talk to pebble
    root: Path  # pebble's issuing root, written once it runs: what HTTPS clients trust


def listener_certificate(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for pebble's HTTPS listener on the controller's link address."""
    cert, key = workdir / "listener.pem", workdir / "listener.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=pebble listener of the e2e suite",
                    "-addext", f"subjectAltName=IP:{CONTROLLER}",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def command_missing() -> str | None:
    for tool in ("pebble", "pebble-challtestsrv"):
        if not shutil.which(tool):
            return f"{tool} is not installed (Debian package pebble): run `make system-deps`"
    return None


@pytest.fixture(scope="module")
def host(testhost_available) -> Iterator[dict]:
    """A bare host of this module's own (acme1, 10.231.141.2)."""
    with bare_host("acme", NET) as host:
        yield host


@pytest.fixture(scope="module")
def pebble(host) -> Iterator[Pebble]:
    """pebble and its DNS on the controller's end of the host's link (it exists once the host is up)."""
    if missing := command_missing():
        pytest.fail(missing, pytrace=False)
    workdir = Path(tempfile.mkdtemp(prefix="acme-pebble-"))
    cert, key = listener_certificate(workdir)
    config = workdir / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"{CONTROLLER}:{ACME_PORT}",
        "managementListenAddress": f"{CONTROLLER}:{MANAGEMENT_PORT}",
        "certificate": str(cert), "privateKey": str(key),
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}))
    # No waiting before validations, and no deliberately rejected nonces (certbot would stop).
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    processes = []
    try:
        with open(workdir / "challtestsrv.log", "wb") as log:
            processes.append(subprocess.Popen(
                ["pebble-challtestsrv", "-defaultIPv4", HOST_ADDRESS, "-defaultIPv6", "",
                 "-dns01", f"{CONTROLLER}:{DNS_PORT}", "-management", f"{CONTROLLER}:{DNS_MANAGEMENT_PORT}",
                 "-http01", "", "-https01", "", "-tlsalpn01", ""],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        with open(workdir / "pebble.log", "wb") as log:
            processes.append(subprocess.Popen(
                ["pebble", "-config", str(config), "-dnsserver", f"{CONTROLLER}:{DNS_PORT}"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        listener = ssl.create_default_context(cafile=str(cert))

        def root() -> str:
            with httpx.Client(verify=listener, timeout=5) as client:
                return client.get(f"https://{CONTROLLER}:{MANAGEMENT_PORT}/roots/0").text

        def answers() -> str | None:
            if any(p.poll() is not None for p in processes):
                raise AssertionError(f"pebble exited:\n{(workdir / 'pebble.log').read_text()}"
                                     f"{(workdir / 'challtestsrv.log').read_text()}")
            try:
                return root()
            except httpx.HTTPError:
                return None

        pem = wait_until(answers, 30, "pebble's management interface", interval=0.2)
        (workdir / "root.pem").write_text(pem)
        yield Pebble(DIRECTORY, cert, workdir / "root.pem")
    finally:
        for process in processes:
            stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def inventory(host, pebble) -> Path:
    """What an operator of a private ACME CA writes: acme mode, its directory and its HTTPS CA.
    API only (no Redis, no scheduler): the certificate is what is tested here."""
    path = host["dir"] / "acme.yml"
    entry = {host["name"]: host["access"]}
    path.write_text(yaml.safe_dump({"all": {
        "children": {"api": {"hosts": entry}, "scheduler": {"hosts": {}}, "redis": {"hosts": {}}},
        "vars": {
            "nginx_server_name": f"{host['name']}.test",
            "nginx_tls_mode": "acme",
            "nginx_acme_email": "ops@example.org",
            "nginx_acme_server": pebble.directory,
            "nginx_acme_server_ca": str(pebble.listener_ca),
            "api_project_dir": str(REPO),
            "api_scheduler_jobs": "",
            # pebble's validation requests and the load come from the controller's address.
            "nginx_rate_limit_exempt": ["127.0.0.0/8", "::1/128", f"{CONTROLLER}/32"],
        },
    }}))
    return path


@pytest.fixture(scope="module")
def site(inventory, pebble) -> Iterator[ApiHost]:
    control_dir = Path(tempfile.mkdtemp(prefix="acme-ssh-", dir="/tmp"))
    api_host = ApiHost.from_inventory(inventory, control_dir, ca=pebble.root)
    try:
        yield api_host
    finally:
        api_host.close()
        shutil.rmtree(control_dir, ignore_errors=True)


def served_certificate(site: ApiHost) -> dict:
    """The certificate nginx hands a new connection, verified against pebble's root only."""
    context = ssl.create_default_context(cafile=str(site.ca))
    with socket.create_connection((site.address, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=site.server_name) as tls:
            return tls.getpeercert()


def live_certificate_digest(site: ApiHost) -> str:
    pem = site.sh(f"cat {LIVE_CERT.format(name=site.server_name)}").stdout
    return hashlib.sha256(pem.encode()).hexdigest()


def issued(site: ApiHost) -> list[str]:
    """The certificates certbot has received for the site (cert1.pem, cert2.pem, ...)."""
    out = site.sh(f"ls /etc/letsencrypt/archive/{site.server_name}/").stdout
    return sorted(name for name in out.split() if name.startswith("cert"))


# ---------------------------------------------------------------- the tests, in order


def test_site_yml_gets_the_certificate_over_http01(site):
    run = site.playbook("site.yml")
    print(f"site.yml in acme mode from bare: {run.seconds:.0f} s, recap {run.recap}")
    assert run.returncode == 0, str(run)
    assert "nginx : Request the certificate" in run.tasks_with("changed")
    # pebble fetched the token (once per validation attempt) from the controller through the
    # kit's port 80 location.
    fetches = {(f["remote_addr"], f["status"]) for f in site.log_records("/var/log/nginx/access.log", "acme-challenge")}
    assert fetches == {(CONTROLLER, 200)}, fetches
    assert ("DNS", site.server_name) in served_certificate(site)["subjectAltName"]
    assert issued(site) == ["cert1.pem"]
    health = site.health()
    assert health["runtime"] == {"loop": "uvloop", "http": "httptools"}


def test_second_site_yml_changes_nothing_and_requests_nothing(site):
    before = served_certificate(site)["serialNumber"]
    run = site.playbook("site.yml")
    print(f"site.yml again: {run.seconds:.0f} s")
    assert run.returncode == 0, str(run)
    assert run.recap[site.name]["changed"] == 0, f"changed tasks: {run.tasks_with('changed')}\n{run}"
    assert issued(site) == ["cert1.pem"]
    assert served_certificate(site)["serialNumber"] == before


def test_the_renewal_timer_is_enabled(site):
    states = site.sh("systemctl is-enabled certbot.timer; systemctl is-active certbot.timer").stdout.split()
    assert states == ["enabled", "active"]


def test_forced_renewal_under_load_serves_the_new_certificate_and_fails_no_request(site):
    before = served_certificate(site)["serialNumber"]
    started = time.monotonic()
    # What certbot.timer runs, forced: renewal through the same webroot, then the kit's deploy hook.
    renew = "certbot renew --force-renewal --no-random-sleep-on-renew --non-interactive"
    # The hook reloads nginx, whose old workers close their idle keep-alive connections: a GET
    # sent on one in that instant is answered on a new connection, as any HTTP client may do.
    result, outcome = run_under_load(Target(site.address, site.server_name, str(site.ca)),
                                     lambda: site.sh(renew, check=False), clients=LOAD_CLIENTS,
                                     min_requests=LOAD_REQUESTS, retry_closed=True)
    print(f"renewal: {time.monotonic() - started:.1f} s; load: {result.total} requests by "
          f"{LOAD_CLIENTS} clients, {len(result.failures)} failed, {result.retried} retried on a "
          "new connection after nginx closed an idle one")
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    assert result.total >= LOAD_REQUESTS
    assert result.failures == [], f"{len(result.failures)} failed; first: {result.failures[:5]}"
    assert issued(site) == ["cert1.pem", "cert2.pem"]
    # The hook reloads nginx; its new workers answer new connections with the new certificate.
    after = wait_until(lambda: (serial := served_certificate(site)["serialNumber"]) != before and serial,
                       30, "nginx to serve the renewed certificate", interval=0.5)
    print(f"serial {before} -> {after}")


def test_unreachable_acme_server_is_named_and_the_certificate_stays(site, inventory):
    before = (live_certificate_digest(site), served_certificate(site)["serialNumber"])
    unreachable = f"https://{CONTROLLER}:1/dir"  # our own link, a closed port
    run = site.playbook("site.yml", "-e", f"nginx_acme_server={unreachable}")
    assert run.returncode != 0, str(run)
    # The callback folds long messages over lines.
    fatal = " ".join(run.output[run.output.index("fatal:"):].split())
    assert f"nginx_acme_server {unreachable} does not answer" in fatal, str(run)
    assert (live_certificate_digest(site), served_certificate(site)["serialNumber"]) == before
    assert site.sh("systemctl is-active nginx").stdout.strip() == "active"
    site.health()
