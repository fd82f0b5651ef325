"""The controller's processes as /proc shows them: which belong to a test host (its
systemd-nspawn, and everything in the container's PID namespace), and signalling them."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from testhost_lib.hosts import Host


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live process, None if it is gone or a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return None if fields[0] in "ZX" else (fields[0], int(fields[1]), int(fields[19]))


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def pid_namespace(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def nspawns() -> list[tuple[int, str, str]]:
    """(pid, machine name, root directory) of every running systemd-nspawn."""
    found = []
    for pid in all_pids():
        args = cmdline(pid)
        if args and os.path.basename(args[0]) == "systemd-nspawn" and proc_stat(pid):
            after = {a: b for a, b in zip(args, args[1:])}
            found.append((pid, after.get("-M", ""), after.get("-D", "")))
    return found


def host_processes(host: Host) -> tuple[list[int], list[int]]:
    """(nspawn processes, processes inside the container) belonging to this host."""
    outer = [pid for pid, _, root in nspawns() if root == str(host.root)]
    inner = [pid for pid in all_pids() if host.pidns and pid_namespace(pid) == host.pidns and proc_stat(pid)]
    return outer, inner


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if proc_stat(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

