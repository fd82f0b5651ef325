"""Helpers for the end-to-end suite: driving tools/testhost and inspecting its hosts, raw HTTP
requests, and load through nginx on the session's host (the test_site*.py modules).

Importable from every e2e test module (pytest puts tests/e2e on sys.path).
"""

import http.client
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from api_host import REPO, VENV_BIN, ApiHost
from load import LoadResult, Target, run_under_load
from support import wait_until

TESTHOST = REPO / "tools" / "testhost"


@dataclass
class TestHosts:
    """One tools/testhost state directory: hosts PREFIX1..N on 10.231.NET.0/24, NET+1, ..."""

    __test__ = False  # not a test class, despite the name

    dir: Path
    prefix: str
    net: int

    def run(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
        result = subprocess.run([str(TESTHOST), "--dir", str(self.dir), *args],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"testhost {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def up(self, count: int = 1) -> list[dict]:
        self.run("up", "--count", str(count), "--prefix", self.prefix, "--net", str(self.net))
        return self.hosts()

    def down(self) -> None:
        self.run("down")

    def ssh(self, name: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs a shell command on a host as the deploy user."""
        return self.run("ssh", name, command, check=check, timeout=60)

    def hosts(self) -> list[dict]:
        """The tool's per-host state: name, net, address parts, nspawn pid, PID namespace, ..."""
        states = [json.loads(p.read_text()) for p in self.dir.glob("*/state.json")]
        return sorted(states, key=lambda s: s["net"])

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory"

    @property
    def ca(self) -> Path:
        """Where site.yml's self-signed mode keeps the CA for these hosts."""
        return self.dir / "ca.pem"

    def inventory_vars(self) -> dict:
        """What an inventory of these hosts sets for all of them: how to reach them over SSH, and
        the kit's example app as the project."""
        return {
            "ansible_user": "deploy",
            "ansible_ssh_private_key_file": str(self.dir / "id_ed25519"),
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.dir / 'known_hosts'} "
                                       "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
            "api_project_dir": str(REPO),
        }


@contextmanager
def bare_host(prefix: str, net: int) -> Iterator[dict]:
    """A bare host of one test module's own (PREFIX1 on 10.231.NET.0/24), removed afterwards:
    its tools/testhost directory, its name and its variables in the written inventory."""
    hosts = TestHosts(REPO / ".testhosts" / prefix, prefix=prefix, net=net)
    try:
        hosts.down()
        (state,) = hosts.up(1)
        listing = json.loads(subprocess.run(
            [VENV_BIN / "ansible-inventory", "-i", hosts.inventory, "--list"],
            capture_output=True, text=True, check=True, timeout=120).stdout)
        # How to reach the host, without the settings of the example app tools/testhost adds.
        hostvars = listing["_meta"]["hostvars"][state["name"]]
        access = {k: v for k, v in hostvars.items() if k.startswith("ansible_") or k == "nginx_server_name"}
        yield {"dir": hosts.dir, "name": state["name"], "access": access}
    finally:
        hosts.down()


@contextmanager
def operator_host(host: dict, filename: str, groups: list[str], variables: dict) -> Iterator["ApiHost"]:
    """A bare_host as an operator's inventory names it (written beside the host's state): the
    host in `groups`, its name as nginx_server_name, and the app's `variables`."""
    inventory = host["dir"] / filename
    entry = {host["name"]: host["access"]}
    inventory.write_text(yaml.safe_dump({"all": {
        "children": {group: {"hosts": entry} for group in groups},
        "vars": {"nginx_server_name": f"{host['name']}.test", **variables},
    }}))
    # Short: SSH control socket paths must fit in a sockaddr_un.
    control_dir = Path(tempfile.mkdtemp(prefix=f"{host['name']}-ssh-", dir="/tmp"))
    api_host = ApiHost.from_inventory(inventory, control_dir)
    try:
        yield api_host
    finally:
        api_host.close()
        shutil.rmtree(control_dir, ignore_errors=True)


def operator_extra_vars(text: str) -> dict:
    """E2E_EXTRA_VARS (`name=value ...`, split like a shell) as variables: a value starting with
    [ or { is JSON, as ansible-playbook -e reads it (nginx_rate_limit_exempt='["127.0.0.0/8"]')."""
    pairs = (pair.partition("=") for pair in shlex.split(text))
    return {name: json.loads(value) if value.startswith(("[", "{")) else value for name, _, value in pairs}


def address(host: dict) -> str:
    return f"10.231.{host['net']}.2"


def wait_exited(pid: int, timeout: float = 10) -> None:
    """Waits until a process is gone or a zombie (PID 1 reaps it in its own time)."""
    wait_until(lambda: not process_alive(pid), timeout, f"process {pid} to exit")


def process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def leftovers(hosts: TestHosts, states: list[dict]) -> list[str]:
    """Everything of these hosts still present on the controller: links, mounts, nft tables,
    processes (nspawn or inside the guests' PID namespaces), state files, inventory."""
    found = []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    found += [f"link {m}" for m in re.findall(rf"\d+: (ve-{hosts.prefix}\d+)", links)]
    mounts = Path("/proc/self/mounts").read_text()
    found += [f"mount {line}" for line in mounts.splitlines() if str(hosts.dir) in line]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    found += [f"nft {t}" for t in re.findall(rf"table ip (testhost_{hosts.prefix}\d+)", tables)]
    namespaces = {s["pidns"] for s in states}
    for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()):
        try:
            ns = os.readlink(f"/proc/{pid}/ns/pid")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ours = ns in namespaces or (cmd.startswith("systemd-nspawn") and str(hosts.dir) in cmd)
        if ours and process_alive(pid):
            found.append(f"process {pid} {cmd}")
    found += [f"state {p.parent.name}" for p in hosts.dir.glob("*/state.json")]
    if hosts.inventory.exists():
        found.append("inventory")
    return found


def project_copy(source: Path, appended: str) -> Path:
    """A copy of this repository (the example app) into source, `appended` added to its
    app/main.py: a project whose code changed and whose lock did not."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    with (source / "app" / "main.py").open("a") as main:
        main.write(f"\n{appended}\n")
    return source


def broken_project(source: Path) -> Path:
    """A copy of the example app whose app raises on import: a release that cannot start."""
    return project_copy(source, 'raise RuntimeError("e2e: this release cannot start")')


@dataclass
class RawResponse:
    tls_version: str | None
    status: int | None  # None: the server closed the connection without an answer
    headers: dict[str, str]
    body: str


def raw_request(address: str, host: str, path: str = "/", *, tls_name: str | None = None,
                ca: Path | None = None, version: ssl.TLSVersion | None = None, method: str = "GET",
                content_length: int = 0) -> RawResponse:
    """One HTTP/1.1 request with Host and SNI chosen independently (what a browser never does).
    Plain HTTP on port 80 without tls_name; TLS errors propagate as ssl.SSLError. The body announced
    by content_length is never sent: enough to meet a size limit."""
    sock = socket.create_connection((address, 443 if tls_name else 80), timeout=10)
    tls_version = None
    if tls_name:
        context = ssl.create_default_context(cafile=str(ca))
        if version is not None:
            context.minimum_version = context.maximum_version = version
        sock = context.wrap_socket(sock, server_hostname=tls_name)
        tls_version = sock.version()
    with sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                     f"Content-Length: {content_length}\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except http.client.RemoteDisconnected:
            return RawResponse(tls_version, None, {}, "")
        return RawResponse(tls_version, response.status, {k.lower(): v for k, v in response.getheaders()},
                           response.read().decode(errors="replace"))


# ---------------------------------------------------------------- load on the session's host


LOAD_CLIENTS = 16
LOAD_REQUESTS = 3000


def target(site: ApiHost) -> Target:
    return Target(site.address, site.server_name, str(site.ca))


@dataclass
class LoadRun:
    result: LoadResult
    name: str  # the counter this run's POSTs incremented, or the tag of the notes they inserted
    notes: bool

    @property
    def logged_as(self) -> str:
        """What each of this run's POSTs shows in nginx's access log."""
        return f"/notes?run={self.name}" if self.notes else f"/counters/{self.name}"

    def rows(self, site: ApiHost) -> int:
        """What the POSTs left: the counter's value, or the number of notes with the run's tag."""
        if self.notes:
            return site.get(f"/notes/count?tag={self.name}").json()["count"]
        return int(site.redis("GET", f"api:counters:{self.name}") or 0)


def under_load(site: ApiHost, operation, notes: bool = False, **options) -> tuple[LoadRun, object]:
    """Mixed keep-alive load through nginx/TLS: GET /health and POST /counters/<fresh name> (Redis)
    or, with `notes`, POST /notes (a row in PostgreSQL each, tagged with the fresh name, which the
    query string repeats for nginx's log)."""
    name = f"e2e-{uuid.uuid4().hex[:12]}"
    run = LoadRun(LoadResult(), name, notes)
    posts = ({"post_path": run.logged_as, "post_json": {"text": "under load", "tag": name}} if notes
             else {"counter": name})
    result, outcome = run_under_load(target(site), operation, clients=LOAD_CLIENTS,
                                     min_requests=LOAD_REQUESTS, **posts, **options)
    print(f"load: {result.total} requests ({result.posts_ok} POSTs answered 2xx) by {LOAD_CLIENTS} "
          f"clients, {len(result.failures)} failed, versions {dict(result.versions)}")
    run.result = result
    return run, outcome


def retried_posts(site: ApiHost, run: LoadRun) -> list[dict]:
    """nginx access log lines of the run's POSTs that nginx sent upstream more than once, once
    nginx's buffered log holds a line for each POST answered 2xx."""
    answered = run.result.posts_ok

    def logged() -> list[dict]:
        found = site.log_records("/var/log/nginx/api.access.log", run.logged_as)
        return found if len(found) >= answered else []

    records = wait_until(logged, 10, f"nginx's access lines of {answered} POSTs") if answered else []
    return [r for r in records if r["method"] == "POST" and "," in r["upstream_status"]]


def assert_no_failures(site: ApiHost, run: LoadRun) -> None:
    result = run.result
    assert result.total >= LOAD_REQUESTS
    kinds = Counter(failure.split(":", 1)[0] for failure in result.failures)
    assert result.failures == [], (f"{len(result.failures)} of {result.total} requests failed "
                                   f"({dict(kinds)}); first: {result.failures[:5]}")
    # Nothing lost, nothing twice: every 2xx POST incremented the counter (or inserted its row) once.
    assert run.rows(site) == result.posts_ok
    assert retried_posts(site, run) == []


def workers(site: ApiHost) -> tuple[int, set[int]]:
    """(gunicorn master, its worker processes)."""
    main = int(site.unit("api.service", "MainPID")["MainPID"])
    children = site.sh(f"ps -o pid= --ppid {main} || true").stdout.split()
    return main, {int(pid) for pid in children}
