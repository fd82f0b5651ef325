"""Real processes for the tests: redis-server, PostgreSQL, gunicorn, the scheduler daemon.

Importable from every test module: pytest puts this directory on sys.path for tests/conftest.py.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# The example app, as the inventory names it (deploy/ansible/roles/api/defaults/main.yml).
EXAMPLE_APP = "app.main:app"
EXAMPLE_JOBS = "app.jobs:jobs"

T = TypeVar("T")


# The tasks every playbook runs before it connects to a host (deploy/ansible/inventory-checks.yml).
INVENTORY_CHECK_TASK = re.compile(r"shared : (Take the renamed variables under their old names|Warn about the old names"
                                  r"|Validate the inventory)|\w+ : Check the \w+ variables")


def stopped_by_the_checks(tasks: list[str]) -> bool:
    """Whether a play that ran these tasks (in order) stopped in its inventory checks, before any
    task that connects to a host."""
    return (bool(tasks) and tasks[-1] == "shared : Validate the inventory"
            and all(INVENTORY_CHECK_TASK.fullmatch(task) for task in tasks))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Polls condition() until it returns something truthy; fails naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """The samples a metrics listener on 127.0.0.1:port serves now, keyed by name and labels;
    an empty dict while nothing answers there."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except httpx.TransportError:
        return {}
    response.raise_for_status()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def samples_of(samples: dict[tuple[str, frozenset], float], name: str) -> dict[frozenset, float]:
    """The labels and values of one metric's samples."""
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def base_env(**overrides: str) -> dict[str, str]:
    """A clean environment: nothing from the developer's shell leaks into the settings."""
    env = {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    env.update(overrides)
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


class RedisServer:
    """redis-server on a free 127.0.0.1 port, data in its own directory; stop()/start() keep both."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            args, stdout=(self.directory / "redis.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self.ping, 10, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                auth = f"AUTH {self.password}\r\n" if self.password else ""
                sock.sendall(f"{auth}PING\r\n".encode())
                return b"+PONG" in _read_some(sock, b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> str:
        """One command through redis-cli (a client independent of the code under test)."""
        cli = ["redis-cli", "-p", str(self.port), "--no-auth-warning"]
        if self.password:
            cli += ["-a", self.password]
        return subprocess.run(cli + list(args), capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()


def postgres_bin_dir() -> Path:
    """The newest PostgreSQL Debian's `postgresql` package installed (its binaries are not on PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise AssertionError("no PostgreSQL server in /usr/lib/postgresql: `make system-deps` installs it")
    return found[-1].parent


class PostgresServer:
    """A throw-away PostgreSQL cluster on a free 127.0.0.1 port, its data and unix socket in a
    fresh /tmp/api-test-postgres-* directory; stop()/start() keep both, as a restart on a host
    does. The app connects as `api` with a password; psql() is the superuser over the socket.

    postgres refuses to run as root: as root, the cluster belongs to the `postgres` user."""

    USER = "api"
    # "%" and "@" must be quoted in the URL, and "%" must survive Alembic's configuration.
    PASSWORD = "pg-s3cret%@pw"
    DATABASE = "api"

    def __init__(self) -> None:
        self.bin = postgres_bin_dir()
        self.directory = Path(tempfile.mkdtemp(prefix="api-test-postgres-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.owner = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
        if self.owner:
            shutil.chown(self.directory, "postgres", "postgres")

    @property
    def url(self) -> str:
        return (f"postgresql://{self.USER}:{quote(self.PASSWORD, safe='')}@127.0.0.1:{self.port}/"
                f"{self.DATABASE}")

    def create(self) -> "PostgresServer":
        """initdb, start, and the app's role and database."""
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                   "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"])
        self.start()
        self.psql(f"CREATE ROLE {self.USER} LOGIN PASSWORD '{self.PASSWORD}'", database="postgres")
        self.psql(f"CREATE DATABASE {self.DATABASE} OWNER {self.USER}", database="postgres")
        return self

    def start(self) -> "PostgresServer":
        # fsync off: the tests restart the server cleanly, never the machine.
        args = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.directory}",
                "-c", "fsync=off", "-c", "full_page_writes=off"]
        self.proc = subprocess.Popen(
            args, stdout=(self.directory / "postgres.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True, **self.owner,
        )
        wait_until(self.ready, 30, f"PostgreSQL on port {self.port}", interval=0.1)
        return self

    def stop(self) -> None:
        """A fast shutdown (SIGINT): open sessions are ended, as on `systemctl stop`, rather than
        waited for (pooled connections would hold a smart shutdown forever)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(30)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
        return subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", str(self.directory),
                               "-p", str(self.port)], timeout=10).returncode == 0

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """One statement as the superuser over the unix socket (a client independent of the code
        under test); its rows, one a line, columns separated by |."""
        return self._run([str(self.bin / "psql"), "-h", str(self.directory), "-p", str(self.port),
                          "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql])

    def log(self) -> str:
        return (self.directory / "postgres.log").read_text(errors="replace")

    def _run(self, args: list[str]) -> str:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=self.directory,
                              **self.owner)
        if done.returncode != 0:
            raise AssertionError(f"{args[0]} failed ({done.returncode}): {done.stderr}")
        return done.stdout.strip()


def _read_some(sock: socket.socket, until: bytes) -> bytes:
    data = b""
    while until not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class Process:
    """A long-running child of ours with its output in a file of JSON log lines."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, env=self.env, stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 40) -> int:
        return stop_process(self.proc, timeout)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict]:
        """Every line as JSON; a line that is not JSON fails the test that reads it."""
        lines = []
        for raw in self.output().splitlines():
            if raw.strip():
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    raise AssertionError(f"log line is not JSON: {raw!r}") from None
        return lines


class Gunicorn(Process):
    """`gunicorn -c gunicorn.conf.py` from the repository root, bound to 127.0.0.1:<free port>."""

    def __init__(self, log_path: Path, **env: str) -> None:
        self.port = free_port()
        settings = {"ASGI_APP": EXAMPLE_APP, "API_BIND": f"127.0.0.1:{self.port}",
                    "API_WORKERS": "2", "API_GRACEFUL_TIMEOUT": "10", **env}
        self.health_path = settings.get("HEALTH_PATH", "/health")
        super().__init__([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py"],
                         base_env(**settings), log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 10) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def wait_serving(self, timeout: float = 30) -> "Gunicorn":
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return httpx.get(f"{self.url}{self.health_path}", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout, f"gunicorn to serve {self.health_path}")
        return self

    def worker_pids(self) -> set[int]:
        """Live (not zombie) children of the master, read from /proc."""
        pids = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            state, ppid = fields[0], int(fields[1])
            if ppid == self.pid and state != "Z":
                pids.add(int(stat.parent.name))
        return pids

    def worker_ids(self) -> dict[int, int]:
        """pid -> WORKER_ID of each live worker, from the line each worker logs when it starts."""
        started = {line["pid"]: line["worker_id"] for line in self.log_lines()
                   if line.get("msg") == "worker started"}
        return {pid: started.get(pid) for pid in self.worker_pids()}

    def settled_ids(self, count: int, timeout: float = 30) -> dict[int, int]:
        """Waits until exactly `count` workers live and each has logged its id."""
        def settled() -> dict[int, int] | None:
            ids = self.worker_ids()
            return ids if len(ids) == count and None not in ids.values() else None

        return wait_until(settled, timeout, f"{count} live gunicorn workers with ids")


def scheduler_process(log_path: Path, **env: str) -> Process:
    return Process([sys.executable, "-m", "vmkit.scheduler"],
                   base_env(**{"SCHEDULER_JOBS": EXAMPLE_JOBS, **env}), log_path)
