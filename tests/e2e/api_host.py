"""The host under test as an Ansible inventory names it (ApiHost): SSH commands on it as root,
its Redis, its logs and units, playbook runs against it (PlaybookRun, read like an operator
would), and HTTPS to it from the controller.

Importable from every e2e test module (pytest puts tests/e2e on sys.path).
"""

import json
import os
import re
import shlex
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "deploy" / "ansible"
VENV_BIN = REPO / ".venv" / "bin"


@dataclass
class PlaybookRun:
    """One ansible-playbook run: its exit status and its whole output, read like an operator would."""

    command: list[str]
    returncode: int
    output: str
    seconds: float
    # Asks the hosts where a task failed what systemd saw; called only when a failure is shown.
    diagnose: Callable[[list[str]], str] | None = field(default=None, repr=False)

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP per host: {"e2e1": {"ok": 67, "changed": 49, "failed": 0, ...}}."""
        _, found, tail = self.output.rpartition("PLAY RECAP")
        if not found:
            return {}
        return {m[1]: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[2])}
                for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", tail, re.M)}

    @property
    def tasks(self) -> list[str]:
        """The tasks and handlers that ran, in order."""
        return re.findall(r"^(?:TASK|RUNNING HANDLER) \[(.+?)\] \*+$", self.output, re.M)

    def tasks_with(self, status: str) -> list[str]:
        """Tasks that reported `status` (changed, failed, fatal) for some host."""
        blocks = re.split(r"^(?=(?:TASK|RUNNING HANDLER) \[)", self.output, flags=re.M)
        return [block.split("]", 1)[0].split("[", 1)[1] for block in blocks
                if block.startswith(("TASK", "RUNNING HANDLER")) and re.search(rf"^{status}: ", block, re.M)]

    @property
    def failures(self) -> list[str]:
        """Each task that failed for some host (rescued ones too), with what it said: the fatal or
        failed line and its indented result, at most 20 lines of it."""
        blocks = re.split(r"^(?=(?:TASK|RUNNING HANDLER) \[)", self.output, flags=re.M)
        return [block.split("\n", 1)[0] + "\n" + "\n".join(
                    "\n".join(found.splitlines()[:20])
                    for found in re.findall(r"^(?:fatal|failed): .*(?:\n[ \t]+\S.*)*", block, re.M))
                for block in blocks if re.search(r"^(?:fatal|failed): ", block, re.M)]

    @property
    def failed_hosts(self) -> list[str]:
        return [host for host, counts in self.recap.items() if counts.get("failed")]

    def __str__(self) -> str:
        lines = self.output.splitlines()
        shown = "\n".join(lines[-80:])
        failed = "".join(f"{failure}\n" for failure in self.failures)
        seen = (f"what systemd saw there:\n{self.diagnose(self.failed_hosts)}\n"
                if self.returncode and self.failed_hosts and self.diagnose else "")
        return (f"$ {' '.join(self.command)}\n(exit {self.returncode} after {self.seconds:.0f} s)\n"
                f"{'failed tasks:' if failed else ''}\n{failed}{seen}"
                f"last {min(80, len(lines))} of {len(lines)} lines:\n{shown}")


@dataclass
class ApiHost:
    """The host under test, as the inventory describes it: SSH access, its address and HTTPS name,
    and the CA that signs its certificate."""

    inventory: Path
    name: str
    address: str
    server_name: str
    ca: Path
    ssh_command: list[str]
    extra_vars: dict
    control_dir: Path  # SSH master connections of the session (ours and Ansible's)

    @classmethod
    def from_inventory(cls, inventory: Path, control_dir: Path, name: str | None = None,
                       ca: Path | None = None, extra_vars: dict | None = None) -> "ApiHost":
        """`extra_vars` go to every playbook and override the inventory's SSH settings too."""
        listing = json.loads(subprocess.run(
            [VENV_BIN / "ansible-inventory", "-i", inventory, "--list"],
            capture_output=True, text=True, check=True, timeout=120).stdout)
        api_hosts = listing.get("api", {}).get("hosts", [])
        name = name or (api_hosts[0] if api_hosts else None)
        if name is None or name not in api_hosts:
            raise AssertionError(f"{inventory}: no host {name or ''} in group api (hosts: {api_hosts})")
        hostvars = {**listing["_meta"]["hostvars"].get(name, {}), **(extra_vars or {})}
        address = hostvars.get("ansible_host", name)
        inventory_dir = inventory if inventory.is_dir() else inventory.parent
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
               "-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%C", "-o", "ControlPersist=300"]
        if key := hostvars.get("ansible_ssh_private_key_file"):
            ssh += ["-i", str(key)]
        if port := hostvars.get("ansible_port"):
            ssh += ["-p", str(port)]
        for option in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
            ssh += shlex.split(hostvars.get(option, ""))
        user = hostvars.get("ansible_user")
        ssh.append(f"{user}@{address}" if user else address)
        return cls(inventory=inventory, name=name, address=address,
                   server_name=hostvars.get("nginx_server_name", ""),
                   ca=ca or inventory_dir / "ca.pem", ssh_command=ssh,
                   extra_vars=extra_vars or {}, control_dir=control_dir)

    def close(self) -> None:
        """Ends the SSH master connections this session left open (ours and Ansible's)."""
        for sock in self.control_dir.iterdir():
            if sock.is_socket():
                subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "host"],
                               capture_output=True, timeout=30)

    # ------------------------------------------------------------ commands on the host

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Runs a bash script on the host as root (on stdin, so sudo's log shows no arguments)."""
        return self._run(["sudo", "-n", "bash", "-s"], script, check, timeout)

    def python(self, code: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Runs Python code with the host's python3 as root."""
        return self._run(["sudo", "-n", "python3", "-"], code, check, timeout)

    def _run(self, command: list[str], script: str, check: bool, timeout: float) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.ssh_command, *command], input=script, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"on {self.name}, exit {result.returncode}:\n{script}\n"
                                 f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def log_lines(self, path: str, containing: str = "") -> list[str]:
        """The complete lines of a log another process writes (nginx writes its buffer whenever
        it is full or a second old, so the last line may be half written): only lines that end in
        a newline, and only those containing `containing`."""
        code = (f"import sys\ntext = open({path!r}, errors='replace').read()\n"
                f"lines = text[:text.rfind(chr(10)) + 1].splitlines()\n"
                f"sys.stdout.write(''.join(line + chr(10) for line in lines if {containing!r} in line))\n")
        return self.python(code).stdout.splitlines()

    def log_records(self, path: str, containing: str = "") -> list[dict]:
        """log_lines of a JSON-lines log, parsed."""
        return [json.loads(line) for line in self.log_lines(path, containing)]

    def unit(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def env_setting(self, name: str) -> str:
        """A value from /etc/api/api.env (root-only: it holds the Redis password)."""
        value = self.python(
            "import shlex\nfor line in open('/etc/api/api.env'):\n"
            f"    if line.startswith('{name}='):\n        print(shlex.split(line.split('=', 1)[1])[0])\n"
        ).stdout.strip()
        assert value, f"{name} is not set in /etc/api/api.env"
        return value

    def journal_cursor(self) -> str:
        """Where the journal ends now: app_errors(since=) shows only what came after."""
        return self.sh("journalctl -n 0 --show-cursor --no-pager").stdout.split("cursor: ")[1].strip()

    def app_errors(self, since: str) -> str:
        """The tracebacks and error records the services logged after the cursor `since`: why a
        request failed, read when a test saw one fail."""
        return self.sh(f"journalctl --after-cursor='{since}' -u 'api*' -o cat --no-pager "
                       "| grep -E -A30 'Traceback|\"level\": ?\"(ERROR|error|CRITICAL|critical)' | tail -80 || true").stdout

    def redis(self, *args: str) -> str:
        """A redis-cli command on the host as the API's Redis user, with the password of api.env
        (never on a command line)."""
        code = REDIS_CLI.replace("ARGS", repr(list(args)))
        return self.python(code).stdout.strip()

    # ------------------------------------------------------------ Ansible

    def playbook(self, playbook: str, *args: str, timeout: float = 900) -> PlaybookRun:
        command = [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory),
                   str(ANSIBLE_DIR / playbook), "-e", json.dumps(self.extra_vars), *args]
        started = time.monotonic()
        result = self._ansible(command, timeout)
        return PlaybookRun(command, result.returncode, result.stdout + result.stderr,
                           time.monotonic() - started, diagnose=self.systemd_failures)

    def systemd_failures(self, hosts: list[str]) -> str:
        """The failed units and this boot's warnings on some hosts of the inventory."""
        try:
            result = self._ansible([str(VENV_BIN / "ansible"), ":".join(hosts), "-i", str(self.inventory),
                                    "-e", json.dumps(self.extra_vars), "--become", "-m", "ansible.builtin.shell",
                                    "-a", "systemctl --failed --no-legend --no-pager; "
                                          "journalctl -b -p warning -n 40 --no-pager -o short-monotonic"], 120)
        except subprocess.TimeoutExpired:
            return "(no answer within 120 s)"
        return result.stdout + result.stderr

    def _ansible(self, command: list[str], timeout: float) -> subprocess.CompletedProcess:
        env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir)}
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)

    # ------------------------------------------------------------ HTTPS from the controller

    def client(self, **kwargs) -> httpx.Client:
        """HTTPS to the host's address with its server name as Host and SNI; trusts only the CA."""
        return httpx.Client(base_url=f"https://{self.address}", headers={"Host": self.server_name},
                            verify=ssl.create_default_context(cafile=str(self.ca)), timeout=30, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        with self.client() as client:
            return client.request(method, path, extensions={"sni_hostname": self.server_name}, **kwargs)

    def health(self) -> dict:
        response = self.get("/health")
        assert response.status_code == 200, f"/health: {response.status_code} {response.text}"
        return response.json()


REDIS_CLI = """
import os, shlex, subprocess, sys
from urllib.parse import unquote, urlsplit
for line in open('/etc/api/api.env'):
    if line.startswith('REDIS_URL='):
        url = urlsplit(shlex.split(line.split('=', 1)[1])[0])
env = {**os.environ, 'REDISCLI_AUTH': unquote(url.password or '')}
cli = ['redis-cli', '-h', url.hostname, '-p', str(url.port or 6379), '-n', url.path.strip('/') or '0']
cli += ['--user', unquote(url.username)] if url.username else []
result = subprocess.run(cli + ARGS, env=env, capture_output=True, text=True)
sys.stdout.write(result.stdout)
sys.exit(result.returncode or ('ERR' in result.stdout[:4]))
"""
