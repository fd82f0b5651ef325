"""The test-host tooling itself: hosts boot real systemd, are reachable over SSH and by Ansible
with the written inventory, and leave nothing behind when torn down or after a crash."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from e2e_support import REPO, address, leftovers, wait_exited

pytestmark = pytest.mark.e2e

ANSIBLE = REPO / ".venv" / "bin"


def test_host_boots_systemd_and_accepts_ssh(testhosts):
    host = testhosts.hosts()[0]
    result = testhosts.ssh(host["name"], "systemctl is-system-running; hostname; ps -o comm= -p 1; sudo -n id -u")
    assert result.stdout.split() == ["running", host["name"], "systemd", "0"]


def test_inventory_lets_ansible_reach_the_host(testhosts):
    host = testhosts.hosts()[0]
    listing = subprocess.run([ANSIBLE / "ansible-inventory", "-i", testhosts.inventory, "--list"],
                             capture_output=True, text=True, check=True)
    inventory = json.loads(listing.stdout)
    for group in ("api", "scheduler", "redis"):
        assert inventory[group]["hosts"] == [host["name"]]
    hostvars = inventory["_meta"]["hostvars"][host["name"]]
    assert hostvars["ansible_host"] == address(host)
    assert hostvars["ansible_user"] == "deploy"
    assert hostvars["nginx_server_name"] == f"{host['name']}.test"
    assert Path(hostvars["ansible_ssh_private_key_file"]).is_absolute()
    ping = subprocess.run([ANSIBLE / "ansible", "-i", testhosts.inventory, "all", "-m", "ping"],
                          capture_output=True, text=True, timeout=120)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_guest_uses_the_controllers_debian_mirror_and_cas(testhosts):
    host = testhosts.hosts()[0]
    controller_cas = sorted(p.name for p in Path("/usr/local/share/ca-certificates").glob("*.crt"))
    guest_cas = testhosts.ssh(host["name"], "ls /usr/local/share/ca-certificates").stdout.split()
    assert guest_cas == controller_cas
    mirror = testhosts.ssh(host["name"], "awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources")
    release = testhosts.ssh(
        host["name"], f"curl -fsS -o /dev/null -w '%{{http_code}}' {mirror.stdout.strip()}/dists/bookworm/Release")
    assert release.stdout == "200"


def test_up_again_keeps_the_running_host(testhosts):
    before = testhosts.hosts()
    assert testhosts.up(1) == before


def test_two_hosts_side_by_side_and_teardown_leaves_nothing(scratch_hosts):
    first, second = scratch_hosts.up(2)
    assert (address(first), address(second)) == ("10.231.201.2", "10.231.202.2")
    for host in (first, second):
        assert scratch_hosts.ssh(host["name"], "systemctl is-system-running").stdout.strip() == "running"
    # Hosts reach each other (through the controller), as the api hosts reach the redis host.
    reach = scratch_hosts.ssh(second["name"], f"timeout 5 bash -c '</dev/tcp/{address(first)}/22' && echo open")
    assert reach.stdout.strip() == "open"

    scratch_hosts.down()
    assert leftovers(scratch_hosts, [first, second]) == []


def test_down_cleans_up_after_nspawn_was_killed(scratch_hosts):
    (host,) = scratch_hosts.up(1)
    os.kill(host["pid"], signal.SIGKILL)
    wait_exited(host["pid"])
    assert "dead" in scratch_hosts.run("status").stdout

    scratch_hosts.down()
    assert leftovers(scratch_hosts, [host]) == []


def test_up_replaces_a_crashed_host(scratch_hosts):
    (crashed,) = scratch_hosts.up(1)
    os.kill(crashed["pid"], signal.SIGKILL)
    wait_exited(crashed["pid"])

    (host,) = scratch_hosts.up(1)
    assert host["pid"] != crashed["pid"]
    assert scratch_hosts.ssh(host["name"], "systemctl is-system-running").stdout.strip() == "running"
