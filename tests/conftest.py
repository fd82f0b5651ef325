"""Shared fixtures: real redis-server instances on free ports (helpers in tests/support.py)."""

from collections.abc import Iterator

import pytest

from support import RedisServer


@pytest.fixture
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test. `.stop()` / `.start()` simulate an outage: the
    port and data directory stay the same, so clients reconnect to the same address."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()
