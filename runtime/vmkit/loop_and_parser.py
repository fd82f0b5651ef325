"""Which event loop and HTTP parser this worker really runs, found out at start-up.

uvicorn picks both at run time ("auto" falls back to asyncio / h11 when uvloop / httptools cannot
be imported), so a broken wheel would silently cost throughput. The loop is read from the running
loop; the parser from the uvicorn Config the kit's worker (vmkit.worker) runs with, whose
`http_protocol_class` is the class uvicorn instantiates for every connection.
"""

import asyncio
import logging
import os
from dataclasses import dataclass

from vmkit import worker_ids

log = logging.getLogger(__name__)

EXPECTED_LOOP = "uvloop"
EXPECTED_HTTP = "httptools"
UNKNOWN = "unknown"

# Set by vmkit.worker before uvicorn starts; a process served otherwise (a plain `uvicorn app`
# run) has none, and its parser is reported as unknown.
server_config = None


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
    """uvicorn.protocols.http.httptools_impl -> "httptools", ...h11_impl -> "h11"; a subclass
    (the kit's draining protocol) is named after the uvicorn class it extends."""
    for cls in protocol_class.__mro__:
        module = cls.__module__.rsplit(".", 1)[-1]
        if cls.__module__.startswith("uvicorn.") and module.endswith("_impl"):
            return module.removesuffix("_impl")
    return UNKNOWN


def current_http() -> str:
    protocol_class = getattr(server_config, "http_protocol_class", None)
    return http_name(protocol_class) if isinstance(protocol_class, type) else UNKNOWN


def current_worker_id() -> int:
    # A process not started by gunicorn's hooks (e.g. a plain uvicorn run) is the only worker.
    return int(os.environ.get(worker_ids.ENV_VAR, "0"))


def detect() -> Runtime:
    return Runtime(
        loop=loop_name(asyncio.get_running_loop()),
        http=current_http(),
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
