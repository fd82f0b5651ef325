"""What every part of the test-host tooling shares: the checkout, errors and logging, running
commands, the state directory's lock, and mounts (found, undone, never deleted through)."""
from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


class Error(Exception):
    pass


def log(msg: str, tool: str = "testhost") -> None:
    print(f"{tool}: {msg}", file=sys.stderr, flush=True)


def run(*cmd: object, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=check, **kw)


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
        if point == str(path) or point.startswith(prefix):
            points.append(point)
    return points


def unmount_under(path: Path) -> None:
    for point in sorted(mounts_under(path), key=len, reverse=True):
        run("umount", point)


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to descend into anything still mounted (e.g. the cached lower dir)."""
    if mounts_under(path):
        raise Error(f"refusing to delete {path}: still mounted: {', '.join(mounts_under(path))}")
    if path.exists():
        shutil.rmtree(path)

