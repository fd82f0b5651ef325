"""The Vagrantfile operators use on their laptops, validated wherever vagrant is installed.

`make vagrant-e2e` boots it for real (libvirt, a box built here) and runs part of the suite
against the VM; this module is part of that run too.
"""

import os
import shutil
import subprocess
import sys

import pytest
from e2e_support import REPO, operator_extra_vars

pytestmark = pytest.mark.e2e


def test_vagrantfile_is_valid(tmp_path):
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed")
    # No provider may be installed here: validate the configuration, not a provider's setup.
    # Vagrant's state directory would otherwise appear in the checkout.
    env = {**os.environ, "VAGRANT_DOTFILE_PATH": str(tmp_path / ".vagrant")}
    result = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_vm_settings_reach_the_suite_as_written(tmp_path):
    """What `tools/vagrant-vm env` prints, evaluated by the shell as `make vagrant-e2e` does, is
    what the suite's E2E_EXTRA_VARS parser reads (a list lost its JSON quotes here once, after a
    39-minute `vagrant up`)."""
    if os.geteuid() != 0:
        pytest.skip("tools/vagrant-vm runs as root only")
    shutil.copytree(REPO / "tools", tmp_path / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    # The state `up` leaves: which libvirt domain type it used.
    (tmp_path / ".vagrant").mkdir()
    (tmp_path / ".vagrant" / "api-kit-driver").write_text("qemu")
    exported = subprocess.run(
        ["bash", "-c", 'eval "$("$1" "$2" env)" && printf %s "$E2E_EXTRA_VARS"', "env-check",
         sys.executable, tmp_path / "tools" / "vagrant-vm"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    extra_vars = operator_extra_vars(exported)
    assert extra_vars["ansible_user"] == "vagrant"
    assert extra_vars["nginx_rate_limit_exempt"] == ["127.0.0.0/8", "192.168.141.1/32"]
    assert extra_vars["ansible_ssh_common_args"] == (
        f"-o UserKnownHostsFile={tmp_path}/.vagrant/api-kit-known_hosts -o StrictHostKeyChecking=accept-new")
