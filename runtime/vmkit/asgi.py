"""Small pieces of raw ASGI the kit's middleware share: the HTTP-only middleware shape, watching
the response go out, reading a whole request body, handing it on to the app as if unread, and
answering with a short JSON body."""

import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HttpMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware, no task per request) for HTTP requests alone:
    lifespan and WebSocket scopes go to the app untouched, HTTP requests to `http`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class ResponseWatch:
    """A `send` that notes what goes through it: the status (500 until a response starts, what the
    server answers for an app that raised), when the headers left, and the body's bytes."""

    __slots__ = ("send", "status", "answered", "body_bytes")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500
        self.answered = 0.0
        self.body_bytes = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.answered = time.perf_counter()
        elif message["type"] == "http.response.body":
            self.body_bytes += len(message.get("body", b""))
        await self.send(message)


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int | None = None) -> bytes | None:
    """The whole request body; None when the client went away first. BodyTooLarge as soon as it
    passes `limit` bytes."""
    chunks = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        received += len(chunks[-1])
        if limit is not None and received > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app `body` first, then whatever the client does next (e.g. a
    disconnect the app waits for)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def send_json(send: Send, status: int, content: object,
                    extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(content)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
