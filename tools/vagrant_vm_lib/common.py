"""What the parts of tools/vagrant-vm share: the VM's names (box, libvirt pool and domain
prefix), the settings `up` hands the Vagrantfile, the state it leaves in .vagrant/, its log."""
from __future__ import annotations

import os
from pathlib import Path

from testhost_lib.base import PROJECT
from testhost_lib.base import log as tool_log
from testhost_lib.rootfs import CACHE

BOX = "api-kit/bookworm64"
BOX_CACHE = CACHE / "vagrant"
# The VM's own names and subnets: apart from other libvirt users of this machine.
PREFIX = "api-kit-"
POOL = "api-kit"
POOL_DIR = Path("/var/lib/libvirt/images/api-kit")
SETTINGS = {
    "VAGRANT_DEFAULT_PROVIDER": "libvirt",
    "API_VM_BOX": BOX,
    "API_VM_IP": os.environ.get("API_VM_IP", "192.168.141.10"),
    "API_VM_MANAGEMENT_NETWORK": os.environ.get("API_VM_MANAGEMENT_NETWORK", "192.168.142.0/24"),
    "API_VM_LIBVIRT_POOL": POOL,
}
VM_NAME = "api-vm"
# The state `up` leaves for `env` and `down`: the libvirt domain type it chose, the PIDs of the
# daemons it started, and the VM's SSH host keys.
STATE = PROJECT / ".vagrant"
DRIVER_FILE = STATE / "api-kit-driver"
STARTED_DAEMONS = STATE / "api-kit-daemons"
# Vagrant's provisioner checks no host key. The suite trusts the VM's keys on first use and holds
# it to them, in a file of its own: the next VM at the same address has new keys.
KNOWN_HOSTS = STATE / "api-kit-known_hosts"


def log(msg: str) -> None:
    tool_log(msg, tool="vagrant-vm")
