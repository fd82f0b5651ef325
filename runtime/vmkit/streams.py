"""Streams leave nginx as the app yields them, for every app.

nginx buffers a proxied response by default: each event of a Server-Sent Events or NDJSON stream
would wait in its buffer until the buffer fills or the response ends. It passes a response on
unbuffered when the response carries `X-Accel-Buffering: no`. `Unbuffered` adds that header to
every `text/event-stream` and `application/x-ndjson` response, whatever their parameters
(`text/event-stream; charset=utf-8`), unless the response sets the header itself; any other
response the app wants passed on as it is written (a long JSON stream, say) sets it itself.
Unbuffered, nginx flushes each chunk through gzip too.
"""

from starlette.types import Message, Receive, Scope, Send

from vmkit.asgi import HttpMiddleware

STREAMING_TYPES = frozenset({b"text/event-stream", b"application/x-ndjson"})
HEADER = b"x-accel-buffering"


def is_stream(headers) -> bool:
    """Whether a response with these headers is a stream to pass on unbuffered, and does not
    say itself how nginx should buffer it."""
    media_type = None
    for name, value in headers:
        name = name.lower()
        if name == HEADER:
            return False
        if name == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
    return media_type in STREAMING_TYPES


class Unbuffered(HttpMiddleware):
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_unbuffered(message: Message) -> None:
            if message["type"] == "http.response.start" and is_stream(message.get("headers", ())):
                message = {**message, "headers": [*message["headers"], (HEADER, b"no")]}
            await send(message)

        await self.app(scope, receive, send_unbuffered)
