"""Helpers for the end-to-end suite: driving tools/testhost and inspecting its hosts.

Importable from every e2e test module (pytest puts tests/e2e on sys.path).
"""

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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


def address(host: dict) -> str:
    return f"10.231.{host['net']}.2"


def wait_exited(pid: int, timeout: float = 10) -> None:
    """Waits until a process is gone or a zombie (PID 1 reaps it in its own time)."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still running after {timeout} s"
        time.sleep(0.05)


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
