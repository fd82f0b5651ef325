"""Naming the event loop and HTTP parser from the objects uvicorn really uses."""

import asyncio
import logging

import pytest
import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vmkit import loop_and_parser


class DrainingHttpTools(HttpToolsProtocol):
    """A protocol of the kit's own would extend uvicorn's; it is named after what it extends."""


def test_parser_names_come_from_uvicorn_protocol_classes():
    assert loop_and_parser.http_name(HttpToolsProtocol) == "httptools"
    assert loop_and_parser.http_name(H11Protocol) == "h11"
    assert loop_and_parser.http_name(DrainingHttpTools) == "httptools"
    assert loop_and_parser.http_name(object) == loop_and_parser.UNKNOWN


async def _asgi_app(scope, receive, send):
    return None


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_parser_from_the_config_the_worker_runs(monkeypatch, http):
    config = Config(app=_asgi_app, http=http)
    config.load()
    monkeypatch.setattr(loop_and_parser, "server_config", config)
    assert loop_and_parser.current_http() == http


def test_parser_is_unknown_under_another_server(monkeypatch):
    monkeypatch.setattr(loop_and_parser, "server_config", None)
    assert loop_and_parser.current_http() == loop_and_parser.UNKNOWN


def test_loop_names():
    async def name() -> str:
        return loop_and_parser.loop_name(asyncio.get_running_loop())

    assert uvloop.run(name()) == "uvloop"
    assert asyncio.run(name()) == "asyncio"


def test_fallback_is_an_error_in_production_only(caplog):
    caplog.set_level(logging.INFO, logger="vmkit.loop_and_parser")
    fallback = loop_and_parser.Runtime(loop="asyncio", http="h11", worker_id=0, pid=1)
    loop_and_parser.report(fallback, production=True)
    loop_and_parser.report(fallback, production=False)
    loop_and_parser.report(loop_and_parser.Runtime("uvloop", "httptools", 0, 1), production=True)
    assert [record.levelname for record in caplog.records] == ["ERROR", "WARNING", "INFO"]
