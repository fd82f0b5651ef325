"""scripts/run_local.py (`make run`): Redis + API + scheduler in the foreground, Ctrl-C stops all."""

import os
import signal
import subprocess
import sys

import httpx

from support import REPO, base_env, free_port, wait_until


def _children_alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(pid)
        except FileNotFoundError:
            pass
    return alive


def _child_pids(parent: int) -> set[int]:
    with open(f"/proc/{parent}/task/{parent}/children") as children:
        return {int(pid) for pid in children.read().split()}


def test_run_local_serves_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    log = (tmp_path / "run.log").open("wb")
    children: set[int] = set()
    supervisor = subprocess.Popen(
        [sys.executable, "scripts/run_local.py", "--port", str(port)], cwd=REPO,
        env=base_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        def health() -> dict | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
            except httpx.HTTPError:
                return None

        body = wait_until(health, 30, "make run's API to serve /health")
        assert body["runtime"] == {"loop": "uvloop", "http": "httptools"}
        ready = wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200, 30,
            "the local scheduler to make /ready 200",
        )
        assert ready
        children = _child_pids(supervisor.pid)
        assert len(children) == 3  # redis-server, gunicorn, scheduler

        supervisor.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the foreground process
        assert supervisor.wait(60) == 0
        assert not _children_alive(children)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        for pid in _children_alive(children):  # each runs in its own session: stop them by pid
            os.kill(pid, signal.SIGTERM)
        log.close()
    output = (tmp_path / "run.log").read_text()
    assert "scheduler stopped" in output
    assert "Shutting down: Master" in output
