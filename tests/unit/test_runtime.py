"""Naming the event loop and HTTP parser from the objects uvicorn really uses."""

import asyncio
import logging

import pytest
import uvloop
from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app import runtime


def test_parser_names_come_from_uvicorn_protocol_classes():
    assert runtime.http_name(HttpToolsProtocol) == "httptools"
    assert runtime.http_name(H11Protocol) == "h11"


async def _asgi_app(scope, receive, send):
    return None


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_parser_from_the_receive_of_uvicorns_lifespan(http):
    lifespan = LifespanOn(Config(app=_asgi_app, http=http))
    assert runtime.http_name_from_lifespan(lifespan.receive) == http


def test_parser_is_unknown_under_another_server():
    async def plain_receive():
        return {}

    assert runtime.http_name_from_lifespan(plain_receive) == runtime.UNKNOWN


def test_loop_names():
    async def name() -> str:
        return runtime.loop_name(asyncio.get_running_loop())

    assert uvloop.run(name()) == "uvloop"
    assert asyncio.run(name()) == "asyncio"


def test_fallback_is_an_error_in_production_only(caplog):
    caplog.set_level(logging.INFO, logger="app.runtime")
    fallback = runtime.Runtime(loop="asyncio", http="h11", worker_id=0, pid=1)
    runtime.report(fallback, production=True)
    runtime.report(fallback, production=False)
    runtime.report(runtime.Runtime("uvloop", "httptools", 0, 1), production=True)
    assert [record.levelname for record in caplog.records] == ["ERROR", "WARNING", "INFO"]
