"""Throw-away systemd test hosts for the end-to-end suite, booted with tools/testhost.

The suite keeps its hosts in their own directory, names and subnets, so an operator's
`make up` host (kit1 in .testhosts/, 10.231.1.0/24) is neither reused nor torn down by a test run.
"""

import os
import shutil
from collections.abc import Iterator

import pytest
from e2e_support import REPO, TestHosts


@pytest.fixture(scope="session")
def testhost_available() -> None:
    if os.geteuid() != 0:
        pytest.skip("test hosts need root (mounts, systemd-nspawn, nft)")
    missing = [t for t in ("systemd-nspawn", "debootstrap", "nft", "zstd") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: run `make system-deps`")


@pytest.fixture(scope="session")
def testhosts(testhost_available) -> Iterator[TestHosts]:
    """One bare host (e2e1, 10.231.101.2) shared by the session; the first use builds the rootfs."""
    hosts = TestHosts(REPO / ".testhosts" / "e2e", prefix="e2e", net=101)
    try:
        hosts.up(1)
        yield hosts
    finally:
        hosts.down()


@pytest.fixture
def scratch_hosts(testhost_available, tmp_path) -> Iterator[TestHosts]:
    """An empty host directory for tests of the host lifecycle itself; emptied again afterwards."""
    hosts = TestHosts(tmp_path / "testhosts", prefix="e2es", net=201)
    try:
        yield hosts
    finally:
        hosts.down()
