"""`make run`: redis-server, the API under gunicorn and the scheduler daemon, in the foreground.

Each child runs in its own session, so Ctrl-C reaches only this supervisor, which then stops them
in reverse start order (scheduler, API, Redis), each with SIGTERM and a bounded wait. If any child
exits on its own, the others are stopped too and the exit status is non-zero.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 40  # above API_GRACEFUL_TIMEOUT and SCHEDULER_DRAIN_TIMEOUT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"run-local: nothing listening on 127.0.0.1:{port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="API port on 127.0.0.1")
    parser.add_argument("--app", default="app.main:app", help="ASGI_APP (module:attribute)")
    parser.add_argument("--jobs", default="app.jobs:jobs", help="SCHEDULER_JOBS; '' = no scheduler")
    args = parser.parse_args()

    redis_server = shutil.which("redis-server")
    if redis_server is None:
        sys.exit("run-local: redis-server is not installed (make system-deps installs it)")
    bin_dir = Path(sys.executable).parent
    data_dir = tempfile.mkdtemp(prefix="api-run-local-")
    redis_port = free_port()

    env = dict(os.environ)
    env.setdefault("API_ENV", "development")
    env.update(
        ASGI_APP=args.app,
        SCHEDULER_JOBS=args.jobs,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        API_BIND=f"127.0.0.1:{args.port}",
        API_CONTROL_SOCKET="",
        PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    if env.get("API_METRICS_BIND"):
        # gunicorn.conf.py asks for the workers' metrics directory; here it goes with the rest.
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(data_dir, "metrics"))
    commands = [
        ("redis", [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                   "--dir", data_dir, "--save", "", "--appendonly", "no"]),
        ("api", [str(bin_dir / "gunicorn"), "-c", "gunicorn.conf.py"]),
    ]
    if args.jobs:
        commands.append(("scheduler", [sys.executable, "-m", "vmkit.scheduler"]))

    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    children: list[tuple[str, subprocess.Popen]] = []
    status = 0
    try:
        for name, command in commands:
            proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
            children.append((name, proc))
            if name == "redis":
                wait_for_port(redis_port, proc)
        print(f"run-local: API on http://127.0.0.1:{args.port} (Redis on port {redis_port}, "
              f"data in {data_dir}); Ctrl-C stops all", file=sys.stderr, flush=True)
        while not stopping:
            exited = [(name, proc) for name, proc in children if proc.poll() is not None]
            if exited:
                name, proc = exited[0]
                print(f"run-local: {name} exited with {proc.returncode}; stopping the rest",
                      file=sys.stderr, flush=True)
                status = 1
                break
            time.sleep(0.2)
    finally:
        for name, proc in reversed(children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(f"run-local: {name} did not stop in {STOP_TIMEOUT}s; killing it",
                          file=sys.stderr, flush=True)
                    proc.kill()
                    proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
