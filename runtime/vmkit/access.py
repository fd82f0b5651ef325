"""The request id of every request, and optionally one JSON access line per request with its
duration (uvicorn's own access log has neither). The kit's worker wraps every app in
RequestContext, outermost, and AccessLog just inside it where the line is on, so the line carries
the id and its duration covers the kit's and the app's own middleware.

Behind nginx the line is off (API_ACCESS_LOG=false): nginx's JSON access log records the same
request id, status and duration (request_time, upstream_response_time) in buffered C, while the
line here costs each request a logging call, a write and journald's parsing (see
docs/performance.md)."""

import logging
import re
import time

from starlette.types import Receive, Scope, Send

from vmkit.asgi import HttpMiddleware, ResponseWatch
from vmkit.logs import current_request_id

log = logging.getLogger("vmkit.access")

# nginx passes the client's X-Request-ID or its own; anything else is not trusted into the logs.
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return value.decode() if _REQUEST_ID.match(value) else None
    return None


class RequestContext(HttpMiddleware):
    """Every line logged while a request is served carries its id (vmkit.logs)."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = current_request_id.set(request_id(scope))
        try:
            await self.app(scope, receive, send)
        finally:
            current_request_id.reset(token)


class AccessLog(HttpMiddleware):
    """Logs method, path (never the query string, which may carry tokens), status, response bytes
    and duration (and, inside RequestContext, the request id); never other headers or bodies. A
    request that raises is logged as 500 and re-raised for the server's error handling."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        response = ResponseWatch(send)
        try:
            await self.app(scope, receive, response)
        finally:
            client = scope.get("client")
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": response.status,
                    "bytes": response.body_bytes,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "client": client[0] if client else None,
                },
            )
