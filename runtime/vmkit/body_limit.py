"""413 for request bodies above API_MAX_BODY_BYTES, before the app or the kit's middleware reads
them. nginx's client_max_body_size is the edge's limit; this one holds where a worker is reached
some other way (gunicorn run directly, a mistake in front of the socket).

Cheaper than FastAPI's `max_body_size`, which wraps every request in three middleware layers: a
request without a body passes after one look at its headers (docs/performance.md)."""

from starlette.types import ASGIApp, Receive, Scope, Send

from vmkit.asgi import BodyTooLarge, read_body, replaying, send_json


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = chunked = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
        if length is not None:
            # The server has already refused a malformed Content-Length with 400.
            if int(length) > self.max_bytes:
                await self._refuse(send)
            else:
                await self.app(scope, receive, send)
        elif chunked is not None:
            await self._buffered(scope, receive, send)
        else:
            await self.app(scope, receive, send)  # no body at all

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A chunked body has no length up front: read here, up to the limit, then handed on."""
        try:
            body = await read_body(receive, self.max_bytes)
        except BodyTooLarge:
            await self._refuse(send)
            return
        if body is not None:
            await self.app(scope, replaying(body, receive), send)

    async def _refuse(self, send: Send) -> None:
        await send_json(send, 413, {"detail": f"request body larger than {self.max_bytes} bytes"},
                        [(b"connection", b"close")])
