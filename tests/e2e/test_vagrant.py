"""The Vagrantfile operators use on their laptops, validated wherever vagrant is installed.

`make vagrant-e2e` boots it for real (libvirt, a box built here) and runs part of the suite
against the VM; this module is part of that run too.
"""

import os
import shutil
import subprocess

import pytest
from e2e_support import REPO

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
