"""A state directory of test hosts (Site) and each host's saved state (Host): names, addresses,
the machine's process, and the SSH key, known_hosts and Ansible inventory written for them."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from testhost_lib.base import PROJECT, Error, run
from testhost_lib.rootfs import USER

# The example app's background process, as its inventory declares it.
EXAMPLE_PROCESSES = {"consumer": "python -m app.consumer"}
# The example app's release hook: its Alembic migrations (a list, so on the host lines of an INI inventory).
EXAMPLE_HOOKS = ["python -m app.migrate"]


@dataclass
class Host:
    name: str
    net: int  # the third octet of the host's /24
    dir: str  # this host's state directory
    lower: str = ""
    pid: int = 0  # systemd-nspawn
    start: int = 0  # its start time, so a reused PID is never mistaken for it
    pidns: str = ""  # the container's PID namespace, to find its processes if nspawn is gone
    hostkey: str = ""
    status: str = "starting"

    @property
    def address(self) -> str:
        return f"10.231.{self.net}.2"

    @property
    def gateway(self) -> str:
        return f"10.231.{self.net}.1"

    @property
    def veth(self) -> str:
        return f"ve-{self.name}"

    @property
    def subnet(self) -> str:
        return f"10.231.{self.net}.0/24"

    @property
    def off_route(self) -> tuple[str, ...]:
        """While the host is powered off its subnet is unreachable (as a switched-off VM on a LAN),
        instead of following the controller's default route out; its link's own route (metric 0)
        takes precedence again once it is back."""
        return ("unreachable", self.subnet, "metric", "4096")

    @property
    def table(self) -> str:
        return f"testhost_{self.name}"

    @property
    def root(self) -> Path:
        return Path(self.dir) / "root"

    def save(self) -> None:
        tmp = Path(self.dir) / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(Path(self.dir) / "state.json")


class Site:
    """A directory of hosts: their state, the SSH key pair, inventory and known_hosts."""

    def __init__(self, path: Path):
        self.path = path.resolve()
        self.key = self.path / "id_ed25519"
        self.known_hosts = self.path / "known_hosts"
        self.inventory = self.path / "inventory"

    def hosts(self) -> list[Host]:
        found = []
        for state in sorted(self.path.glob("*/state.json")):
            found.append(Host(**{**json.loads(state.read_text()), "dir": str(state.parent)}))
        return sorted(found, key=lambda h: h.net)

    def host(self, name: str) -> Host:
        for h in self.hosts():
            if h.name == name:
                return h
        raise Error(f"no host {name!r} under {self.path}")

    def ssh(self, host: Host, *options: str) -> list[str]:
        return ["ssh", "-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR", *options, f"{USER}@{host.address}"]

    def ensure_key(self) -> None:
        if not self.key.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "testhost-deploy", "-f", self.key)

    def write_access_files(self) -> None:
        hosts = self.hosts()
        self.known_hosts.write_text("".join(f"{h.address} {h.hostkey}\n" for h in hosts if h.hostkey))
        running = [h for h in hosts if h.status == "running"]
        if not running:
            self.inventory.unlink(missing_ok=True)
            return
        names = "\n".join(h.name for h in running)
        self.inventory.write_text(
            "# Written by tools/testhost for the hosts running under this directory.\n"
            "# The first host also runs Redis and PostgreSQL.\n[api]\n"
            + "".join(f"{h.name} ansible_host={h.address} ansible_user={USER} "
                      f"ansible_ssh_private_key_file={self.key} nginx_server_name={h.name}.test "
                      f"api_processes=\"{EXAMPLE_PROCESSES!r}\" api_release_hooks=\"{EXAMPLE_HOOKS!r}\"\n"
                      for h in running)
            + f"\n[scheduler]\n{names}\n\n[redis]\n{running[0].name}\n\n[postgres]\n{running[0].name}\n\n[all:vars]\n"
            "ansible_python_interpreter=/usr/bin/python3\n"
            "# Test hosts serve the kit's example app (a real inventory must name its project),\n"
            "# with its background process and its migrations (api_processes, api_release_hooks, above).\n"
            f"api_project_dir={PROJECT}\n"
            f"ansible_ssh_common_args='-o UserKnownHostsFile={self.known_hosts} "
            "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'\n")

