"""Which event loop and HTTP parser this worker really runs, found out at start-up.

uvicorn picks both at run time ("auto" falls back to asyncio / h11 when uvloop / httptools cannot
be imported), so a broken wheel would silently cost throughput. The loop is read from the running
loop. For the parser the ASGI spec offers nothing, so the lifespan `receive` callable is used, as
uvicorn hands it over (app.main.Api captures it before FastAPI wraps it): it is a bound method of
uvicorn's lifespan object, whose `config.http_protocol_class` is the class uvicorn instantiates
for every connection.
"""

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from app import worker_ids

log = logging.getLogger(__name__)

EXPECTED_LOOP = "uvloop"
EXPECTED_HTTP = "httptools"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Runtime:
    loop: str
    http: str
    worker_id: int
    pid: int

    @property
    def as_expected(self) -> bool:
        return self.loop == EXPECTED_LOOP and self.http == EXPECTED_HTTP


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def http_name(protocol_class: type) -> str:
    """uvicorn.protocols.http.httptools_impl -> "httptools", ...h11_impl -> "h11"."""
    module = protocol_class.__module__.rsplit(".", 1)[-1]
    return module.removesuffix("_impl") if module.endswith("_impl") else module


def http_name_from_lifespan(receive: Callable) -> str:
    config = getattr(getattr(receive, "__self__", None), "config", None)
    protocol_class = getattr(config, "http_protocol_class", None)
    return http_name(protocol_class) if isinstance(protocol_class, type) else UNKNOWN


def current_worker_id() -> int:
    # A process not started by gunicorn's hooks (e.g. a plain uvicorn run) is the only worker.
    return int(os.environ.get(worker_ids.ENV_VAR, "0"))


def detect(http_impl: str) -> Runtime:
    return Runtime(
        loop=loop_name(asyncio.get_running_loop()),
        http=http_impl,
        worker_id=current_worker_id(),
        pid=os.getpid(),
    )


def report(runtime: Runtime, production: bool) -> None:
    fields = {"loop": runtime.loop, "http": runtime.http}
    if runtime.as_expected:
        log.info("runtime", extra=fields)
    elif production:
        log.error(
            "runtime fell back from uvloop/httptools: check those wheels in the release venv",
            extra=fields,
        )
    else:
        log.warning("runtime is not uvloop/httptools", extra=fields)
