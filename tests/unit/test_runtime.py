"""Naming the event loop and HTTP parser from the objects uvicorn really uses."""

import asyncio
import logging

import pytest
import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vmkit import runtime


class DrainingHttpTools(HttpToolsProtocol):
    """A protocol of the kit's own would extend uvicorn's; it is named after what it extends."""


def test_parser_names_come_from_uvicorn_protocol_classes():
    assert runtime.http_name(HttpToolsProtocol) == "httptools"
    assert runtime.http_name(H11Protocol) == "h11"
    assert runtime.http_name(DrainingHttpTools) == "httptools"
    assert runtime.http_name(object) == runtime.UNKNOWN


async def _asgi_app(scope, receive, send):
    return None


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_parser_from_the_config_the_worker_runs(monkeypatch, http):
    config = Config(app=_asgi_app, http=http)
    config.load()
    monkeypatch.setattr(runtime, "server_config", config)
    assert runtime.current_http() == http


def test_parser_is_unknown_under_another_server(monkeypatch):
    monkeypatch.setattr(runtime, "server_config", None)
    assert runtime.current_http() == runtime.UNKNOWN


def test_loop_names():
    async def name() -> str:
        return runtime.loop_name(asyncio.get_running_loop())

    assert uvloop.run(name()) == "uvloop"
    assert asyncio.run(name()) == "asyncio"


def test_fallback_is_an_error_in_production_only(caplog):
    caplog.set_level(logging.INFO, logger="vmkit.runtime")
    fallback = runtime.Runtime(loop="asyncio", http="h11", worker_id=0, pid=1)
    runtime.report(fallback, production=True)
    runtime.report(fallback, production=False)
    runtime.report(runtime.Runtime("uvloop", "httptools", 0, 1), production=True)
    assert [record.levelname for record in caplog.records] == ["ERROR", "WARNING", "INFO"]
