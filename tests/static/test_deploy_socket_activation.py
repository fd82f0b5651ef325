"""api.service as systemd would run it, without systemd: the rendered ExecStart, environment and
sandbox flags that can be reproduced in-process, with the listening socket handed over the way
socket activation does (fd 3, LISTEN_FDS, LISTEN_PID) and READY=1 read from a NOTIFY_SOCKET.

Real gunicorn 27, the repository's gunicorn.conf.py and app; the "release" is a directory whose
venv is the project's own. Where the kernel has PR_SET_MDWE, gunicorn runs under the same
memory-deny-write-execute rule as MemoryDenyWriteExecute=yes in the unit; the locked runtime is
also imported under it on its own."""

import ctypes
import importlib.metadata
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from deploy_static import REPO, env_file, unit_settings
from support import RedisServer, base_env, stop_process, wait_until

PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1

# What systemd does between fork and exec for a socket-activated Type=notify service.
EXEC_LIKE_SYSTEMD = r"""
import ctypes, os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
if os.environ.pop("APPLY_MDWE", ""):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        sys.exit(f"PR_SET_MDWE failed: errno {ctypes.get_errno()}")
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="api.socket")
os.execv(sys.argv[2], sys.argv[2:])
"""


def kernel_has_mdwe() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


class Service:
    """api.service's ExecStart on a release directory, fed the socket like systemd feeds it."""

    def __init__(self, rendered, tmp_path: Path, redis_url: str) -> None:
        unit = unit_settings(rendered.text("units/api.service"))
        self.release = tmp_path / "release"
        self.release.mkdir()
        (self.release / "venv").symlink_to(REPO / ".venv")
        (self.release / "gunicorn.conf.py").write_text((REPO / "gunicorn.conf.py").read_text())
        (self.release / "release.env").write_text("APP_VERSION=9.9.9-static\nRELEASE_ID=static\n")
        self.run_dir = tmp_path / "run-api-gunicorn"
        self.run_dir.mkdir()
        self.command = unit["ExecStart"][0].replace("/srv/api/current", str(self.release)).split()
        # systemd applies Environment= first; the EnvironmentFile= lines override it, in order.
        self.env = base_env()
        for assignment in unit["Environment"]:
            key, _, value = assignment.partition("=")
            self.env[key] = value.replace("/run/api-gunicorn", str(self.run_dir))
        self.env.update(env_file(rendered.text("api.env")))
        self.env.update(env_file((self.release / "release.env").read_text()))
        self.env["REDIS_URL"] = redis_url
        self.mdwe = unit.get("MemoryDenyWriteExecute") == ["yes"] and kernel_has_mdwe()
        if self.mdwe:
            self.env["APPLY_MDWE"] = "1"

        self.socket_path = tmp_path / "api.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.socket_path))
        self.listener.listen(int(self.env["API_BACKLOG"]))
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify"))
        self.env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
        self.log = tmp_path / "gunicorn.log"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", EXEC_LIKE_SYSTEMD, str(self.listener.fileno()), *self.command],
            pass_fds=(self.listener.fileno(),), env=self.env, cwd=self.release,
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen, timeout: float = 30) -> None:
        self.notify.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"gunicorn exited with {proc.returncode}:\n{self.log.read_text()}"
            try:
                if b"READY=1" in self.notify.recv(4096):
                    return
            except TimeoutError:
                continue
        raise AssertionError(f"no READY=1 within {timeout}s:\n{self.log.read_text()}")

    def get(self, path: str, timeout: float = 30) -> httpx.Response:
        # A new connection per request, as nginx makes after a worker closed a kept-alive one.
        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        with httpx.Client(transport=transport, base_url="http://api", timeout=timeout) as client:
            return client.get(path, headers={"Connection": "close"})

    def close(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout=40)
        self.listener.close()
        self.notify.close()


@pytest.fixture
def service(rendered, tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    svc = Service(rendered, tmp_path, redis.url)
    try:
        yield svc
    finally:
        svc.close()
        redis.stop()


def test_gunicorn_serves_the_inherited_socket_and_a_restart_refuses_nothing(service):
    first = service.start()
    service.wait_ready(first)
    health = service.get("/health")
    assert health.status_code == 200 and health.json()["version"] == "9.9.9-static"
    # gunicorn opens its control socket in a thread of its own, around the time it reports READY.
    wait_until((service.run_dir / "gunicorn.ctl").is_socket, 10, "gunicorn's control socket")

    # systemctl reload api: HUP, workers replaced, the socket stays.
    first.send_signal(signal.SIGHUP)
    assert service.get("/health").status_code == 200

    # systemctl restart api: TERM to the master only (KillMode=mixed), then a new process.
    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0
    queued: list[httpx.Response | Exception] = []

    def request_while_nothing_serves() -> None:
        try:
            queued.append(service.get("/health"))
        except Exception as error:  # recorded, then asserted on below
            queued.append(error)

    waiter = threading.Thread(target=request_while_nothing_serves)
    waiter.start()
    time.sleep(0.5)
    assert not queued, "the request was answered although no gunicorn was running"
    second = service.start()
    service.wait_ready(second)
    waiter.join(30)
    assert len(queued) == 1 and isinstance(queued[0], httpx.Response), queued
    assert queued[0].status_code == 200
    assert queued[0].json()["pid"] != health.json()["pid"]


def locked_modules() -> list[str]:
    """Top-level modules of every locked distribution installed here (the lock also pins some that
    only older Pythons need, e.g. async-timeout for Debian 12's 3.11.2)."""
    names = re.findall(r"^([A-Za-z0-9_.-]+)==", (REPO / "requirements.lock").read_text(), re.MULTILINE)
    modules = []
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        top_level = dist.read_text("top_level.txt")
        if top_level:
            modules += top_level.split()
        else:
            modules += sorted({f.parts[0].removesuffix(".py") for f in dist.files or [] if len(f.parts) > 1 and
                               not f.parts[0].endswith((".dist-info", ".data")) and f.parts[0] != ".."})
    return [m for m in modules if not m.startswith("_")]


MDWE_PROBE = r"""
import ctypes, importlib, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(65, 1, 0, 0, 0) == 0, ctypes.get_errno()
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("MDWE is not in force")
except PermissionError:
    pass
for name in sys.argv[1:]:
    importlib.import_module(name)
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
assert callback(41) == 42
import asyncio, uvloop
uvloop.install()
asyncio.run(asyncio.sleep(0))
print("ok")
"""


def test_locked_runtime_imports_under_memory_deny_write_execute():
    if not kernel_has_mdwe():
        pytest.skip("this kernel lacks PR_SET_MDWE")
    modules = locked_modules()
    assert {"uvloop", "httptools", "orjson", "pydantic_core", "hiredis"} <= set(modules)
    result = subprocess.run([sys.executable, "-c", MDWE_PROBE, *modules], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
