"""Fixtures shared by the integration tests."""

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from support import REPO, Gunicorn, base_env

SHOP_SOURCES = REPO / "tests" / "shop" / "src"


@pytest.fixture
def shop(tmp_path) -> Iterator[Gunicorn]:
    """tests/shop (package shop, src/ layout) under the kit: no Redis, no scheduler, no kit probes
    but its own /healthz for both, its database in the state directory (migrated first, as its
    release hook does on a host)."""
    env = {"PYTHONPATH": str(SHOP_SOURCES), "STATE_DIRECTORY": str(tmp_path)}
    migrate = subprocess.run([sys.executable, "-m", "shop.migrate"], env=base_env(**env),
                             capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    server = Gunicorn(tmp_path / "gunicorn.log", ASGI_APP="shop.web:api", HEALTH_PATH="/healthz",
                      READY_PATH="/healthz", APP_VERSION="3.1.4", **env).start()
    try:
        yield server.wait_serving()
    finally:
        server.stop()


@pytest.fixture
def client(api) -> Iterator[httpx.Client]:
    """A client of the gunicorn the module's own `api` fixture serves (every request bounded by the
    client's timeout: a hung worker fails the test instead of stalling it)."""
    with api.client() as http:
        yield http
