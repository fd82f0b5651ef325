"""The Vagrantfile operators use on their laptops (it cannot boot here: no usable hypervisor)."""

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
