"""Small pieces of raw ASGI the kit's middleware share: reading a whole request body, handing it
on to the app as if unread, and answering with a short JSON body."""

import orjson
from starlette.types import Message, Receive, Send


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
