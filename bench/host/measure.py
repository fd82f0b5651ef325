"""The host side of `make bench`: runs on a host deployed by site.yml, as root, with Debian's
python3 and nothing else from the kit. bench/run.py copies this directory to the host and calls:

  measure.py peers --seconds S --rounds R   the throughput table (JSON on stdout)
  measure.py load --stop-file F             load until F exists: failed requests, worst latency
  measure.py memory                         RSS of the stack's processes, idle
  measure.py streams --connections N        SSE: time to first event, idle streams held
  measure.py pools --sizes 1,2,4,8          the database route per pool size: the size to use
  measure.py sizing --workers 1,2,4         the deployed stack per gunicorn worker count
  measure.py metrics                        the deployed stack with its Prometheus metrics on and off

Every server is measured on this host, on loopback, with the deployed release's own venv and
settings (/etc/api/api.env): the kit's stack through nginx differs from its peers only in what
sits between wrk and the app. wrk and h2load share the two CPUs with the servers, so absolute
rates are a floor and the ratios, taken from alternating rounds, are the result.
"""

import argparse
import asyncio
import json
import os
import resource
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RELEASE = Path("/srv/api/current").resolve()
VENV_BIN = RELEASE / "venv" / "bin"
PEERS_VENV = Path("/var/tmp/bench-peers")
CEILING_CONF = Path("/etc/nginx/conf.d/bench-ceiling.conf")
CEILING_PORT = 8443
CONNECTIONS = 64
THREADS = 2
BENCH_TAG = "bench"

# What each route is, on every server: (method, path, extra request headers).
ROUTES = {
    "health": ("GET", "/health", {}),
    "small_json": ("GET", "/cache/bench", {}),
    "post": ("POST", "/counters/bench", {}),
    "large_500kb": ("GET", "/large-response?kb=500", {"Accept-Encoding": "identity"}),
    # One indexed query in PostgreSQL per request, through the kit's pool.
    "db_read": ("GET", f"/notes/count?tag={BENCH_TAG}", {}),
}
# A size whose rate is within this share of the best one's is as good: the smallest such is advised.
POOL_WITHIN = 0.95
GZIP = {"Accept-Encoding": "gzip"}


API_ENV = Path("/etc/api/api.env")


def api_env() -> dict[str, str]:
    env = {}
    for line in API_ENV.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = shlex.split(value)[0] if value.strip() else ""
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    key: str
    label: str
    url: str  # scheme://name:port, the routes' paths are appended
    command: list[str] | None = None  # None: already running (the deployed stack, the ceiling)
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def start(self, logdir: Path) -> None:
        if self.command:
            self.proc = subprocess.Popen(self.command, env=self.env, cwd=RELEASE,
                                         stdout=(logdir / f"{self.key}.log").open("wb"),
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(35)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def server_env() -> dict[str, str]:
    """The deployed services' settings, with the release's venv first on PATH."""
    return {**api_env(), "PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": "/root"}


def kit_server(key: str, label: str, app: str, **extra_env: str) -> Server:
    """gunicorn with the release's gunicorn.conf.py (the kit's worker) on a TCP port."""
    port = free_port()
    command = [str(VENV_BIN / "gunicorn"), "--config", str(RELEASE / "gunicorn.conf.py")]
    return Server(key, label, f"http://127.0.0.1:{port}", command,
                  {**server_env(), "ASGI_APP": app, "API_BIND": f"127.0.0.1:{port}",
                   "PYTHONPATH": str(HERE), **extra_env})


def servers(server_name: str, workers: str) -> list[Server]:
    """The deployed stack (a), its app under gunicorn directly (b), the naive install (c), uvicorn
    with uvloop + httptools (d), the peers with the same worker count (e), nginx alone (f), a
    minimal FastAPI app under (b)'s server (g), and (b) with the app's own gzip for the gzip row."""
    env = server_env()
    asgi_app = env["ASGI_APP"]
    nginx_conf = Path("/etc/nginx/nginx.conf").read_text()

    def local(key: str, label: str, port: int, command: list[str], server_env: dict) -> Server:
        return Server(key, label, f"http://127.0.0.1:{port}", command, server_env)

    c_port, d_port, e1_port, e2_port = (free_port() for _ in range(4))
    uvicorn = [str(VENV_BIN / "uvicorn"), asgi_app, "--host", "127.0.0.1"]
    peers_env = {**env, "PYTHONPATH": str(next((RELEASE / "venv" / "lib").glob("python3*/site-packages")))}
    return [
        Server("a", "kit stack: nginx TLS -> socket -> gunicorn + kit worker",
               f"https://{server_name}"),
        kit_server("b", f"same app, gunicorn -w{workers} + kit worker, TCP", asgi_app),
        local("c", "naive: uvicorn, asyncio + h11, 1 process", c_port,
              [*uvicorn, "--port", str(c_port), "--loop", "asyncio", "--http", "h11"], env),
        local("d", "uvicorn, uvloop + httptools, 1 process", d_port,
              [*uvicorn, "--port", str(d_port), "--loop", "uvloop", "--http", "httptools"], env),
        local("e1", f"granian -w{workers}", e1_port,
              [str(PEERS_VENV / "bin" / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
               "--port", str(e1_port), "--workers", workers, "--loop", "uvloop", "--no-ws", asgi_app],
              peers_env),
        local("e2", f"gunicorn -w{workers} -k asgi (gunicorn's own ASGI worker)", e2_port,
              [str(VENV_BIN / "gunicorn"), "-k", "asgi", "-w", workers, "-b", f"127.0.0.1:{e2_port}",
               asgi_app], env),
        Server("f", "nginx alone, return 200, same TLS (ceiling)",
               f"https://{server_name}:{CEILING_PORT}"),
        kit_server("g", f"minimal FastAPI app, gunicorn -w{workers} + kit worker", "minimal_app:app"),
        # The app compresses like the deployed nginx does: same level, same threshold.
        kit_server("z", f"same app + GZipMiddleware, gunicorn -w{workers} + kit worker", "app_gzip:app",
                     BENCH_APP=asgi_app,
                     BENCH_GZIP_LEVEL=nginx_directive(nginx_conf, "gzip_comp_level"),
                     BENCH_GZIP_MIN_LENGTH=nginx_directive(nginx_conf, "gzip_min_length")),
    ]


def nginx_directive(conf: str, name: str) -> str:
    return next(line.split()[1].rstrip(";") for line in conf.splitlines()
                if line.strip().startswith(name + " "))


def wait_ready(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc and server.proc.poll() is not None:
            sys.exit(f"measure: {server.label} exited: {server.proc.args}")
        done = subprocess.run(["curl", "-skf", "-o", "/dev/null", f"{server.url}/health"])
        if done.returncode == 0:
            return
        time.sleep(0.3)
    sys.exit(f"measure: {server.label} does not answer {server.url}/health")


# ------------------------------------------------------------------ load generators


def start_wrk(url: str, method: str, headers: dict, seconds: float,
              connections: int = CONNECTIONS) -> subprocess.Popen:
    command = ["wrk", "-t", str(THREADS), "-c", str(connections), "-d", f"{int(seconds)}s",
               "--timeout", "10s", "-s", str(HERE / "report.lua")]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    return subprocess.Popen([*command, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "BENCH_METHOD": method})


def wrk_report(proc: subprocess.Popen) -> dict:
    """The JSON line report.lua prints when wrk ends (after its duration, or on SIGINT)."""
    out, err = proc.communicate(timeout=660)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        sys.exit(f"measure: wrk printed no report ({proc.args}):\n{out}\n{err}")
    return json.loads(lines[-1])


def wrk(url: str, method: str, headers: dict, seconds: float) -> dict:
    return wrk_report(start_wrk(url, method, headers, seconds))


def h2load(url: str, seconds: float, headers: dict) -> dict:
    """HTTP/2 over TLS, one stream at a time per connection, like wrk's HTTP/1.1 keep-alive."""
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        command = ["h2load", "-t", str(THREADS), "-c", str(CONNECTIONS), "-m", "1",
                   "-D", str(int(seconds)), "--warm-up-time=1", f"--log-file={log.name}"]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        done = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60)
        rows = [line.split("\t") for line in log.read().splitlines() if line.count("\t") == 2]
    # Only the streams that completed (status -1: still open when the duration ran out).
    durations = sorted(int(row[2]) / 1000 for row in rows if row[1] != "-1")
    lines = done.stdout.splitlines()
    summary = [line for line in lines if line.startswith("finished in")]
    statuses = [line for line in lines if line.startswith("status codes:")]
    if not durations or not summary or not statuses:
        sys.exit(f"measure: h2load measured nothing for {url}:\n{done.stdout}\n{done.stderr}")
    # "finished in 5.00s, 12345.67 req/s, 1.23MB/s"; "status codes: 9 2xx, 0 3xx, 1 4xx, 0 5xx"
    not_2xx = sum(int(part.split()[0]) for part in statuses[0].split(":")[1].split(",")[1:])
    return {"rps": float(summary[0].split(",")[1].split()[0]),
            "p50_ms": durations[len(durations) // 2], "p99_ms": durations[int(len(durations) * 0.99)],
            "max_ms": durations[-1], "failed": not_2xx, "bytes_per_request": None}


# ------------------------------------------------------------------ memory


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main_pid(unit: str) -> int:
    out = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", unit],
                         capture_output=True, text=True).stdout.strip()
    return int(out or 0)


def memory() -> dict[str, float]:
    """RSS in MiB of every process of the stack, named by role."""
    found = {}
    for unit, name in (("api", "gunicorn"), ("api-scheduler", "scheduler"),
                       ("nginx", "nginx"), ("redis-server", "redis")):
        pid = main_pid(unit)
        if not pid:
            continue
        found[f"{name} master" if name in ("gunicorn", "nginx") else name] = rss_mib(pid)
        for i, child in enumerate(sorted(children(pid))):
            found[f"{name} worker {i}"] = rss_mib(child)
    return found


# ------------------------------------------------------------------ the runs


def ceiling(server_name: str) -> None:
    """nginx's own `return 200` on another port of the same nginx, under the same http-level TLS
    and logging settings: what the machine can do with no app at all."""
    conf = next(Path("/etc/nginx/sites-enabled").glob("*")).read_text()
    certificate = nginx_directive(conf, "ssl_certificate")
    key = nginx_directive(conf, "ssl_certificate_key")
    # The API server's own listen parameters (ssl, and http2 on nginx before 1.25.1) and http2 line.
    listen = next(line.split(None, 2)[2] for line in conf.splitlines()
                  if line.strip().startswith("listen 443 ") and "default_server" not in line)
    http2 = "    http2 on;\n" if "\n    http2 on;" in conf else ""
    CEILING_CONF.write_text(
        f"server {{\n    listen 127.0.0.1:{CEILING_PORT} {listen}\n{http2}"
        f"    server_name {server_name};\n    ssl_certificate {certificate};\n"
        f"    ssl_certificate_key {key};\n    location / {{ return 200 'ok'; }}\n}}\n")
    subprocess.run(["systemctl", "reload", "nginx"], check=True)


def prepare(server_name: str) -> None:
    hosts = Path("/etc/hosts")
    if f" {server_name}\n" not in hosts.read_text():
        with hosts.open("a") as file:
            file.write(f"127.0.0.1 {server_name}\n")
    subprocess.run(["curl", "-skf", "-X", "PUT", "-H", "Content-Type: application/json",
                    "--data", '{"value": "a small JSON document", "ttl": 3600}',
                    f"https://{server_name}/cache/bench"], check=True, capture_output=True)
    subprocess.run(["curl", "-skf", "-X", "POST", "-H", "Content-Type: application/json",
                    "--data", json.dumps({"text": "a row to count", "tag": BENCH_TAG}),
                    f"https://{server_name}/notes"], check=True, capture_output=True)


def summarise(runs: list[dict]) -> dict:
    keys = ("rps", "p50_ms", "p99_ms", "max_ms", "bytes_per_request")
    out = {key: statistics.median(r[key] for r in runs) if runs[0][key] is not None else None
           for key in keys}
    out["failed"] = sum(r["failed"] for r in runs)
    out["rounds_rps"] = [round(r["rps"]) for r in runs]
    return out


def peers(args) -> dict:
    prepare(args.server_name)
    logdir = Path(tempfile.mkdtemp(prefix="bench-"))
    table = servers(args.server_name, args.workers)
    by_key = {server.key: server for server in table}
    # (server, route, protocol, headers) cells; (f) and (g) answer only /health.
    cells = [(s.key, route, "h1", ROUTES[route][2]) for s in table if s.key not in "fgz"
             for route in ROUTES]
    cells += [("f", "health", "h1", {}), ("g", "health", "h1", {}),
              ("z", "large_500kb", "h1", GZIP), ("a", "large_500kb_gzip", "h1", GZIP)]
    cells += [("a", route, "h2", ROUTES[route][2]) for route in ROUTES if ROUTES[route][0] == "GET"]
    results: dict[tuple, list] = {cell[:3]: [] for cell in cells}
    memory_under_load: dict[str, float] = {}
    try:
        ceiling(args.server_name)
        for server in table:
            server.start(logdir)
        for server in table:
            wait_ready(server)
        for round_number in range(args.rounds):
            # Alternating order: a slow spell of the shared machine hits every server alike.
            ordered = cells if round_number % 2 == 0 else list(reversed(cells))
            for key, route, protocol, headers in ordered:
                method, path, _ = ROUTES[route.removesuffix("_gzip")]
                url = by_key[key].url + path
                sampler = None
                if (key, route, protocol) == ("a", "health", "h1") and not memory_under_load:
                    sampler = threading.Timer(args.seconds / 2, lambda: memory_under_load.update(memory()))
                    sampler.start()
                if protocol == "h2":
                    run = h2load(url, args.seconds, headers)
                else:
                    run = wrk(url, method, headers, args.seconds)
                if sampler:
                    sampler.join()
                results[(key, route, protocol)].append(run)
                print(f"round {round_number + 1} {key:>2} {protocol} {route:<17} "
                      f"{run['rps']:9.0f} req/s", file=sys.stderr, flush=True)
    finally:
        for server in table:
            server.stop()
        CEILING_CONF.unlink(missing_ok=True)
        subprocess.run(["systemctl", "reload", "nginx"], check=False)
    return {
        "servers": {s.key: s.label for s in table},
        "cells": [{"server": key, "route": route, "protocol": protocol, **summarise(runs)}
                  for (key, route, protocol), runs in results.items() if runs],
        "memory_under_load_mib": memory_under_load,
    }


# ------------------------------------------------------------------ database pool


def pools(args) -> dict:
    """The database route on the app under gunicorn directly, once per DATABASE_POOL_SIZE, in
    alternating rounds: requests per second for each size, and the smallest size within
    POOL_WITHIN of the best, the one to set (api_database_pool_size)."""
    prepare(args.server_name)
    logdir = Path(tempfile.mkdtemp(prefix="bench-pools-"))
    sizes = [int(size) for size in args.sizes.split(",")]
    by_size = {size: kit_server(f"pool{size}", f"DATABASE_POOL_SIZE={size}", api_env()["ASGI_APP"],
                                DATABASE_POOL_SIZE=str(size)) for size in sizes}
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    method, path, _ = ROUTES["db_read"]
    try:
        for server in by_size.values():
            server.start(logdir)
            wait_ready(server)
        for round_number in range(args.rounds):
            for size in sizes if round_number % 2 == 0 else reversed(sizes):
                rates[size].append(wrk(by_size[size].url + path, method, {}, args.seconds)["rps"])
                print(f"round {round_number + 1} pool {size:>2} {rates[size][-1]:9.0f} req/s",
                      file=sys.stderr, flush=True)
    finally:
        for server in by_size.values():
            server.stop()
    rps = {size: statistics.median(runs) for size, runs in rates.items()}
    best = max(rps.values())
    return {"rps": {str(size): round(rate) for size, rate in rps.items()}, "within": POOL_WITHIN,
            "recommended": min(size for size, rate in rps.items() if rate >= POOL_WITHIN * best)}


# ------------------------------------------------------------------ the stack's own settings


def with_settings(deployed_env: str, settings: dict[str, str]) -> str:
    """The deployed api.env text with `settings` in place of its own lines for them."""
    lines = [line for line in deployed_env.splitlines() if line.partition("=")[0].strip() not in settings]
    return "\n".join([*lines, *(f'{name}="{value}"' for name, value in settings.items())]) + "\n"


def restart_api(env_text: str, server_name: str) -> None:
    """api restarted on this api.env, and answering through nginx."""
    API_ENV.write_text(env_text)
    # Not checked: on the nspawn test hosts a start right after a stop now and then fails setting
    # up its cgroup (status 219/CGROUP) and Restart=on-failure starts it a second later; a variant
    # that cannot start at all fails wait_ready.
    subprocess.run(["systemctl", "restart", "api"], check=False)
    wait_ready(Server("a", "kit stack", f"https://{server_name}"))


def stack_variants(args, variants: dict[str, dict[str, str]]) -> dict[str, float]:
    """/health through the deployed stack (a) once per api.env variant, in alternating rounds:
    the median req/s of each. api.env is put back and api restarted on it afterwards."""
    prepare(args.server_name)
    method, path, headers = ROUTES["health"]
    rates: dict[str, list[float]] = {name: [] for name in variants}
    deployed_env = API_ENV.read_text()
    try:
        for round_number in range(args.rounds):
            for name in variants if round_number % 2 == 0 else reversed(variants):
                restart_api(with_settings(deployed_env, variants[name]), args.server_name)
                rates[name].append(wrk(f"https://{args.server_name}{path}", method, headers, args.seconds)["rps"])
                print(f"round {round_number + 1} {name:>12} {rates[name][-1]:9.0f} req/s", file=sys.stderr, flush=True)
    finally:
        restart_api(deployed_env, args.server_name)
    return {name: round(statistics.median(runs)) for name, runs in rates.items()}


def sizing(args) -> dict:
    """The stack's /health per gunicorn worker count (API_WORKERS), nginx as deployed."""
    counts = args.workers.split(",")
    nginx_workers = subprocess.run(["pgrep", "-f", "nginx: worker"], capture_output=True, text=True).stdout
    return {"rps": stack_variants(args, {count: {"API_WORKERS": count} for count in counts}),
            "nginx_workers": len(nginx_workers.split())}


def metrics(args) -> dict:
    """The stack's /health with the workers' Prometheus metrics on, as api.service sets them where
    api_metrics is on (its runtime directory, a private listener), and off (the bench host has no
    monitoring group, so off is as deployed)."""
    on = {"API_METRICS_BIND": f"127.0.0.1:{free_port()}", "PROMETHEUS_MULTIPROC_DIR": "/run/api-gunicorn/metrics"}
    return {"rps": stack_variants(args, {"on": on, "off": {}})}


# ------------------------------------------------------------------ streams

STREAM_PATH = "/counters/bench-stream/events"
TTFE_SAMPLES = 40


async def open_stream(host: str, port: int, tls_name: str | None):
    """An SSE request on a new connection; returns the streams once its first event is in."""
    context = None
    if tls_name:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=tls_name)
    writer.write(f"GET {STREAM_PATH} HTTP/1.1\r\nHost: {tls_name or host}\r\n\r\n".encode())
    await writer.drain()
    data = b""
    while b"event: value" not in data:
        chunk = await reader.read(4096)
        if not chunk:
            raise ConnectionError(f"closed before the first event: {data[:200]!r}")
        data += chunk
    return reader, writer


async def time_to_first_event(host: str, port: int, tls_name: str | None) -> float:
    """Median ms from connecting to the first event of the example's SSE route."""
    samples = []
    for _ in range(TTFE_SAMPLES):
        started = time.perf_counter()
        _, writer = await open_stream(host, port, tls_name)
        samples.append((time.perf_counter() - started) * 1000)
        writer.close()
    return round(statistics.median(samples), 2)


async def idle_streams(server_name: str, connections: int) -> dict:
    """Opens up to `connections` SSE streams through the stack, 50 at a time, keeps them idle, and
    reports how many got their first event and the memory the stack grew by per stream."""
    before = memory()
    opened, failures = [], []
    for start in range(0, connections, 50):
        batch = await asyncio.gather(*(open_stream("127.0.0.1", 443, server_name)
                                       for _ in range(start, min(start + 50, connections))),
                                     return_exceptions=True)
        opened += [b for b in batch if not isinstance(b, BaseException)]
        failures += [repr(b)[:200] for b in batch if isinstance(b, BaseException)]
        if failures:
            break
    await asyncio.sleep(2)
    after = memory()
    for _, writer in opened:
        writer.close()
    grown = {role: sum(after[name] - before.get(name, 0) for name in after if name.startswith(role))
             for role in ("gunicorn", "nginx")}
    return {"asked": connections, "held": len(opened), "first_failure": failures[0] if failures else None,
            "kib_per_stream": {role: round(mib * 1024 / max(len(opened), 1), 1) for role, mib in grown.items()}}


def streams(args) -> dict:
    # This client holds one descriptor per stream: it must not be what runs out first.
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    direct = servers(args.server_name, args.workers)[1]
    logdir = Path(tempfile.mkdtemp(prefix="bench-"))
    direct.start(logdir)
    try:
        wait_ready(direct)
        port = int(direct.url.rsplit(":", 1)[1])
        return asyncio.run(_streams(args, port))
    finally:
        direct.stop()


async def _streams(args, direct_port: int) -> dict:
    return {
        "ttfe_ms": {"a": await time_to_first_event("127.0.0.1", 443, args.server_name),
                    "b": await time_to_first_event("127.0.0.1", direct_port, None)},
        "idle": await idle_streams(args.server_name, args.connections),
    }


def load(args) -> dict:
    """GET and POST load on the deployed stack, half the connections each, until the stop file
    appears (the restart, reload and deploy rows): failed requests and the worst latency."""
    stop = Path(args.stop_file)
    stop.unlink(missing_ok=True)
    base = f"https://{args.server_name}"
    runs = {route: start_wrk(base + ROUTES[route][1], ROUTES[route][0], {}, args.max_seconds,
                             CONNECTIONS // 2)
            for route in ("small_json", "post")}
    deadline = time.monotonic() + args.max_seconds
    while not stop.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in runs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    reports = {route: wrk_report(proc) for route, proc in runs.items()}
    return {"requests": sum(r["requests"] for r in reports.values()),
            "failed": sum(r["failed"] for r in reports.values()),
            "max_ms": max(r["max_ms"] for r in reports.values()),
            "seconds": max(r["seconds"] for r in reports.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_peers = sub.add_parser("peers")
    p_peers.add_argument("--server-name", required=True)
    p_peers.add_argument("--workers", required=True)
    p_peers.add_argument("--seconds", type=float, default=5)
    p_peers.add_argument("--rounds", type=int, default=3)
    p_load = sub.add_parser("load")
    p_load.add_argument("--server-name", required=True)
    p_load.add_argument("--stop-file", required=True)
    p_load.add_argument("--max-seconds", type=float, default=600)
    sub.add_parser("memory")
    p_streams = sub.add_parser("streams")
    p_streams.add_argument("--server-name", required=True)
    p_streams.add_argument("--workers", required=True)
    p_streams.add_argument("--connections", type=int, default=4000)
    p_pools = sub.add_parser("pools")
    p_pools.add_argument("--server-name", required=True)
    p_pools.add_argument("--sizes", default="1,2,4,8,16")
    p_pools.add_argument("--seconds", type=float, default=5)
    p_pools.add_argument("--rounds", type=int, default=3)
    p_sizing = sub.add_parser("sizing")
    p_sizing.add_argument("--server-name", required=True)
    p_sizing.add_argument("--workers", default="1,2,4")
    p_sizing.add_argument("--seconds", type=float, default=5)
    p_sizing.add_argument("--rounds", type=int, default=3)
    p_metrics = sub.add_parser("metrics")
    p_metrics.add_argument("--server-name", required=True)
    p_metrics.add_argument("--seconds", type=float, default=5)
    p_metrics.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.command == "peers":
        result = peers(args)
    elif args.command == "pools":
        result = pools(args)
    elif args.command == "sizing":
        result = sizing(args)
    elif args.command == "metrics":
        result = metrics(args)
    elif args.command == "streams":
        result = streams(args)
    elif args.command == "load":
        result = load(args)
    else:
        result = memory()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
