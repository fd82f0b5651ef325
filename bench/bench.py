"""Side-by-side throughput ratios on this machine (not a test; numbers vary from run to run).

    .venv/bin/python bench/bench.py [--seconds 1.5] [--rounds 7] [--connections 16]

Starts its own redis-server and gunicorn instances on free 127.0.0.1 ports and measures, in
alternating rounds so that background noise hits both sides of a pair alike:
  1. /large-response?kb=500, app.api (orjson per request) vs FastAPI's default JSON path
  2. /health, gunicorn -w2 with uvloop + httptools vs the same with asyncio + h11
(Compression is nginx's on the hosts, not the app's, so it is not measured here.)
The load generator is a keep-alive HTTP/1.1 client on asyncio protocols, sharing the CPUs with
the servers: absolute rates are a floor, the ratios are the result.
"""

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import uvloop

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen


def start_gunicorn(name: str, workdir: Path, redis_url: str, *extra: str,
                   app: str = "app.main:app") -> Server:
    port = free_port()
    env = {
        "ASGI_APP": app,
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "REDIS_URL": redis_url,
        "API_BIND": f"127.0.0.1:{port}",
        "API_WORKERS": "2",
        "API_ENV": "development",
        # A worker recycled mid-round closes the keep-alive connections the load runs on.
        "API_MAX_REQUESTS": "0",
    }
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", *extra], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, port, proc)


def wait_serving(port: int, proc: subprocess.Popen, path: str | None, timeout: float = 30) -> None:
    """Until the port accepts (path None) or GET path answers 200 (the workers have booted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: a server exited early ({proc.args})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if path is None:
                    return
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
                if sock.recv(12) == b"HTTP/1.1 200":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"bench: nothing serving on port {port}")


class Client(asyncio.Protocol):
    """One keep-alive connection sending the same request back to back until `stop` is set."""

    def __init__(self, request: bytes, stats: dict, stop: asyncio.Event, done: asyncio.Future):
        self.request, self.stats, self.stop, self.done = request, stats, stop, done
        self.buffer = bytearray()
        self.expected = -1

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        self.buffer += data
        while True:
            if self.expected < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                if not head.startswith(b"http/1.1 200"):
                    self.stats["errors"] += 1
                length = head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]
                self.expected = end + 4 + int(length)
            if len(self.buffer) < self.expected:
                return
            self.stats["bytes"] += self.expected
            self.stats["requests"] += 1
            del self.buffer[: self.expected]
            self.expected = -1
            if self.stop.is_set():
                self.transport.close()
                return
            self.transport.write(self.request)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def load(port: int, path: str, headers: dict, connections: int, seconds: float) -> dict:
    lines = [f"GET {path} HTTP/1.1", "Host: bench"] + [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    stats = {"requests": 0, "bytes": 0, "errors": 0}
    stop = asyncio.Event()
    done = [loop.create_future() for _ in range(connections)]
    for future in done:
        await loop.create_connection(lambda f=future: Client(request, stats, stop, f), "127.0.0.1", port)
    await asyncio.sleep(0.5)  # warm-up: per-worker caches, connection set-up
    start = dict(stats)
    began = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - began
    result = {key: (stats[key] - start[key]) / elapsed for key in stats}
    stop.set()
    await asyncio.wait_for(asyncio.gather(*done), timeout=30)
    return result


async def compare(title: str, a: tuple, b: tuple, args) -> None:
    """a, b: (label, port, path, headers). Alternating rounds; medians of requests per second."""
    rates = {a[0]: [], b[0]: []}
    transfer = {a[0]: [], b[0]: []}
    for _ in range(args.rounds):
        for label, port, path, headers in (a, b):
            result = await load(port, path, headers, args.connections, args.seconds)
            if result["errors"]:
                sys.exit(f"bench: non-200 responses from {label}")
            rates[label].append(result["requests"])
            transfer[label].append(result["bytes"])
    print(f"\n{title}")
    for label in rates:
        rps = statistics.median(rates[label])
        size = statistics.median(b / r for b, r in zip(transfer[label], rates[label], strict=True))
        print(f"  {label:<42} {rps:7.0f} req/s {size / 1024:8.1f} KiB/response  rounds: "
              + " ".join(f"{r:.0f}" for r in rates[label]))
    ratio = statistics.median(rates[a[0]]) / statistics.median(rates[b[0]])
    print(f"  ratio {a[0]} / {b[0]}: {ratio:.1f}x")


async def main(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="api-bench-"))
    redis_port = free_port()
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=(workdir / "redis.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    servers = []
    try:
        wait_serving(redis_port, redis, None)
        servers = [
            start_gunicorn("api", workdir, redis_url),
            start_gunicorn("default-encoder", workdir, redis_url, app="bench.default_encoder:app"),
            start_gunicorn("h11-asyncio", workdir, redis_url, "-k", "uvicorn_worker.UvicornH11Worker"),
        ]
        for server in servers:
            wait_serving(server.port, server.proc, "/large-response?kb=500")
        api, default, h11 = (server.port for server in servers)
        identity = {"Accept-Encoding": "identity"}
        print(f"{os.cpu_count()} CPUs, {args.connections} connections, "
              f"{args.rounds} rounds of {args.seconds}s per variant")
        await compare(
            "/large-response?kb=500: encoder (both uncompressed)",
            ("orjson per request (app.api)", api, "/large-response?kb=500", identity),
            ("FastAPI default JSONResponse path", default, "/large-response?kb=500", identity),
            args,
        )
        await compare(
            "/health, gunicorn -w2",
            ("uvloop + httptools (UvicornWorker)", api, "/health", identity),
            ("asyncio + h11 (UvicornH11Worker)", h11, "/health", identity),
            args,
        )
    finally:
        for proc in [server.proc for server in servers] + [redis]:
            proc.send_signal(signal.SIGTERM)
        for proc in [server.proc for server in servers] + [redis]:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="side-by-side throughput ratios")
    # Many short alternating rounds: a noisy neighbour then skews both sides of a pair alike.
    parser.add_argument("--seconds", type=float, default=1.5, help="measured time per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=16)
    uvloop.run(main(parser.parse_args()))
