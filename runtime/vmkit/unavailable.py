"""The answer to a request that met an outage of a dependency (Redis, the database): its status
(503, or 507 for a full data Redis) with a JSON body naming the dependency, never a 500 or a hung
worker. An outage makes every request fail, so the log gets one warning with the cause per
dependency and interval rather than one per request.
"""

import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse

WARNING_INTERVAL = 10.0


class Unavailable(Exception):
    """A dependency is down, too slow, or not configured: nothing was done. Carries no connection
    details, which may hold credentials."""

    status = 503
    detail = "unavailable"
    # Seconds a client should wait before it retries; None sends no Retry-After.
    retry_after: int | None = None
    log = logging.getLogger("vmkit")


_last_warning: dict[type, float] = {}


async def answer(request: Request, error: Unavailable) -> JSONResponse:
    now = time.monotonic()
    if now - _last_warning.get(type(error), -WARNING_INTERVAL) >= WARNING_INTERVAL:
        _last_warning[type(error)] = now
        error.log.warning(error.detail, extra={"error": str(error.__cause__ or error)})
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return JSONResponse({"detail": error.detail}, status_code=error.status, headers=headers)
