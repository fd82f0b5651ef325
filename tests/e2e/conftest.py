"""Throw-away systemd test hosts for the end-to-end suite, booted with tools/testhost.

The suite keeps its hosts in their own directory, names and subnets, so an operator's
`make up` host (kit1 in .testhosts/, 10.231.1.0/24) is neither reused nor torn down by a test run.

With E2E_INVENTORY set, the site tests run against that inventory's host instead (e.g. the Vagrant
VM): E2E_HOST picks the host (default: the first of group api), E2E_CA the CA file (default:
ca.pem next to the inventory), E2E_EXTRA_VARS adds `name=value ...` to every playbook run and to
the SSH settings (e.g. ansible_user=vagrant ansible_ssh_private_key_file=...; a value starting
with [ or { is JSON).
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_host import ApiHost, PlaybookRun
from e2e_support import REPO, TestHosts, operator_extra_vars

OPERATOR_INVENTORY = os.environ.get("E2E_INVENTORY")

# Settings of the host under test that differ from an operator's: the example job ticks every
# second instead of every minute, so the scheduler tests see many runs in a few seconds; the
# example app's costly route has its own limit, as in the example inventory but one per 30 s, so
# that a p99 measured for several seconds after the first one sees none of the next; and the cache
# Redis is small, so that flooding it twice over takes seconds (test_state).
SUITE_VARS = {
    "api_extra_env": {"SCHEDULER_TICK_SECONDS": 1},
    "nginx_costly_locations": [{"path": "/large-response", "rate": "2r/m", "burst": 1}],
    "redis_cache_maxmemory": "32mb",
}


def controller_address(net: int) -> str:
    """The controller's end of a test host's link (tools/testhost)."""
    return f"10.231.{net}.1"


# The modules on the session's host, in the order their tests build on each other: read-only
# checks, then load and releases, then faults and what must still hold after them.
SITE_MODULES = ("test_site.py", "test_site_zero_downtime.py", "test_site_faults.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The test-host tooling is checked on the bare host before test_site provisions it. The
    SITE_MODULES run one after the other, in that order, where the first of them was collected;
    every other module keeps its place, and every test its place within its module."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if item.path.parent == here]

    def module(item: pytest.Item) -> str:
        return "site" if item.path.name in SITE_MODULES else item.path.name

    place: dict[str, int] = {}
    for n, slot in enumerate(slots):
        place.setdefault(module(items[slot]), n)

    def order(item: pytest.Item) -> tuple[bool, int, int]:
        name = item.path.name
        return (name != "test_testhost.py", place[module(item)],
                SITE_MODULES.index(name) if name in SITE_MODULES else 0)

    ours = sorted((items[i] for i in slots), key=order)
    for slot, item in zip(slots, ours):
        items[slot] = item


@pytest.fixture(scope="session")
def testhost_available() -> None:
    if OPERATOR_INVENTORY:
        pytest.skip(f"E2E_INVENTORY={OPERATOR_INVENTORY}: no local test hosts in this run")
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
        # `up` keeps a healthy host, but one left by an interrupted run is no longer bare.
        hosts.down()
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


@pytest.fixture(scope="session")
def api_host(request) -> Iterator[ApiHost]:
    """The host the site tests provision and probe: e2e1, or the operator's (E2E_INVENTORY)."""
    # Short: SSH control socket paths must fit in a sockaddr_un.
    control_dir = Path(tempfile.mkdtemp(prefix="e2e-ssh-", dir="/tmp"))
    extra_vars = dict(SUITE_VARS)
    if OPERATOR_INVENTORY:
        extra_vars.update(operator_extra_vars(os.environ.get("E2E_EXTRA_VARS", "")))
        ca = os.environ.get("E2E_CA")
        host = ApiHost.from_inventory(Path(OPERATOR_INVENTORY).resolve(), control_dir,
                                      name=os.environ.get("E2E_HOST"), ca=Path(ca).resolve() if ca else None,
                                      extra_vars=extra_vars)
    else:
        testhosts = request.getfixturevalue("testhosts")
        # The controller sends the load of many clients from one address: not rate limited.
        extra_vars["nginx_rate_limit_exempt"] = ["127.0.0.0/8", "::1/128", f"{controller_address(testhosts.net)}/32"]
        host = ApiHost.from_inventory(testhosts.inventory, control_dir, extra_vars=extra_vars)
    try:
        yield host
    finally:
        host.close()
        shutil.rmtree(control_dir, ignore_errors=True)


@dataclass
class Provisioning:
    host: str
    bare: bool  # no trace of the API on the host before the run
    local: bool  # a test host booted for this session (else the operator's host)
    run: PlaybookRun


@pytest.fixture(scope="session")
def provisioning(api_host) -> Provisioning:
    """The session's first site.yml run. Never raises: test_site judges it, the others skip it."""
    before = api_host.sh("test -e /srv/api || test -e /etc/api || systemctl cat api.service",
                         check=False)
    return Provisioning(host=api_host.name, bare=before.returncode != 0, local=not OPERATOR_INVENTORY,
                        run=api_host.playbook("site.yml"))


@pytest.fixture(scope="session")
def site(api_host, provisioning) -> ApiHost:
    """The provisioned host. When provisioning failed, every test using it fails with one line
    (the playbook's output is shown once, by test_site_yml_provisions_a_bare_host)."""
    if provisioning.run.returncode != 0:
        pytest.fail("site.yml failed on the host: see test_site_yml_provisions_a_bare_host", pytrace=False)
    return api_host
