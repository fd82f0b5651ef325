"""Bad input gets a 4xx with a short answer, never a 500, for every app the kit serves.

- JsonBodyGuard (pure ASGI): a request body that is meant as JSON is parsed once by orjson before
  the app sees it; what orjson refuses (NaN and Infinity, numbers beyond a double, invalid UTF-8,
  lone surrogates, nesting deeper than 1024) is answered 400 there. Python's json module, which
  FastAPI uses, accepts all of these, and they come back as a 500 further on (a NaN cannot be
  written into the validation error that echoes it; a lone surrogate cannot be encoded for Redis).
- validation_error_handler: FastAPI's 422, without echoing the input beyond INPUT_SHOWN
  characters (a 1 MiB body that fails validation would come back whole) and serialised by orjson,
  which cannot fail on what pydantic reports.

`install(app)` is called by the kit's worker on every FastAPI app it loads.
"""

import orjson
from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from vmkit.asgi import read_body, replaying, send_json

# Characters of an offending input value shown back in a 422.
INPUT_SHOWN = 64
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _is_json(scope: Scope) -> bool:
    """FastAPI reads a body as JSON when it says so, or says nothing about its type."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json" or media_type.endswith(b"+json")
    return True


class JsonBodyGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return
        if body:
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError as error:
                await send_json(send, 400, {"detail": f"invalid JSON: {str(error)[:200]}"})
                return
        await self.app(scope, replaying(body, receive), send)


def shown_input(value: object) -> object:
    """What a 422 may repeat of an offending value: a short scalar, else nothing."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:  # what JSON encoders write as a number
            return value
        return f"{str(value)[:INPUT_SHOWN]}…" if value.bit_length() < 1000 else None
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return value if len(value) <= INPUT_SHOWN else value[:INPUT_SHOWN] + "…"
    return None


async def validation_error_handler(request: Request, error: RequestValidationError) -> Response:
    details = [
        {"type": item.get("type"), "loc": list(item.get("loc", ())), "msg": item.get("msg"),
         "input": shown_input(item.get("input"))}
        for item in error.errors()[:20]
    ]
    try:
        body = orjson.dumps({"detail": details}, default=str)
    except orjson.JSONEncodeError:  # a lone surrogate in a message: orjson writes none
        body = orjson.dumps({"detail": "invalid request"})
    return Response(body, status_code=422, media_type="application/json")


def install(app: object) -> object:
    """Puts the guard in front of a FastAPI app and, unless the app has a 422 handler of its own,
    the bounded one in place of FastAPI's default."""
    if not isinstance(app, FastAPI):
        return app
    if app.exception_handlers.get(RequestValidationError) is request_validation_exception_handler:
        app.add_exception_handler(RequestValidationError, validation_error_handler)
    return JsonBodyGuard(app)
