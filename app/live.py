"""The example app's live routes: a counter's changes as they happen, over Server-Sent Events and
over a WebSocket.

Both watch the counter in the data Redis (POST /counters/{name} changes it) and send its value
whenever it changed; a worker reads all the counters its clients watch in one round trip per
interval, so idle clients cost no Redis traffic of their own. The SSE stream ends when the worker
starts to drain (vmkit.draining), so a restart or deploy does not wait for it: the browser's
EventSource reconnects by itself, after the `retry` the stream announced. A WebSocket is closed
by the server with 1012 on a restart; the client reconnects.
"""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from vmkit.draining import stopping
from vmkit.redis import RedisUnavailable, client, redis_call

from app.api import REDIS_DOWN, CounterName, counter_key

router = APIRouter()

# How often the watched counters are read (one MGET for all of a worker's clients).
POLL_SECONDS = 0.25
# A comment line this often keeps a silent stream open through proxies (nginx closes an upstream
# connection after nginx_proxy_timeout, 30 s, without a byte).
KEEPALIVE_SECONDS = 15.0
# What an EventSource waits before it reconnects, in ms.
RECONNECT_MS = 1000


class CounterWatch:
    """The counters this worker's clients watch, read with one MGET per POLL_SECONDS however many
    clients watch them (idle streams cost no Redis round trips of their own)."""

    def __init__(self) -> None:
        self.watchers: Counter[str] = Counter()
        self.values: dict[str, int] = {}
        self.failed = False
        self.round = asyncio.Event()
        self.poller: asyncio.Task | None = None

    async def values_of(self, name: str) -> AsyncIterator[int | None]:
        """The counter's value now, then each time it differs from the last one sent; None when a
        keep-alive is due. Ends when the worker drains; RedisUnavailable when Redis is down."""
        # Read once for this client: its first value does not wait for the next round.
        last, quiet = await current_value(name), 0.0
        yield last
        self.watchers[name] += 1
        if self.poller is None or self.poller.done():
            self.poller = asyncio.create_task(self._poll())
        try:
            while not stopping().is_set():
                this_round = self.round
                await _first_of(this_round, stopping(), timeout=KEEPALIVE_SECONDS)
                if self.failed:
                    raise RedisUnavailable("poll failed")
                # A round that read this counter (one that began before this client came may not).
                value = self.values.get(name) if this_round.is_set() else None
                if value is not None and value != last:
                    last, quiet = value, 0.0
                    yield value
                elif this_round.is_set():
                    quiet += POLL_SECONDS
                if quiet >= KEEPALIVE_SECONDS:
                    quiet = 0.0
                    yield None
        finally:
            self.watchers[name] -= 1
            if not self.watchers[name]:
                del self.watchers[name]

    async def _poll(self) -> None:
        while self.watchers and not stopping().is_set():
            names = list(self.watchers)
            try:
                raw = await redis_call(client().mget([counter_key(name) for name in names]))
                self.values, self.failed = {n: int(v or 0) for n, v in zip(names, raw)}, False
            except RedisUnavailable:
                self.failed = True
            self.round.set()
            self.round = asyncio.Event()
            await asyncio.sleep(POLL_SECONDS)


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


watch = CounterWatch()


async def current_value(name: str) -> int:
    raw = await redis_call(client().get(counter_key(name)))
    return int(raw or 0)


def _event(name: str, value: int) -> bytes:
    return b"event: value\ndata: " + orjson.dumps({"name": name, "value": value}) + b"\n\n"


@router.get("/counters/{name}/events", responses=REDIS_DOWN,
            response_description="text/event-stream: an event `value` with the counter's value on each change")
async def counter_events(name: CounterName) -> StreamingResponse:
    # Before the stream starts: Redis down is a 503, not an empty stream.
    values = watch.values_of(name)
    first = await anext(values)

    async def events() -> AsyncIterator[bytes]:
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        yield _event(name, first)
        try:
            async for value in values:
                yield b": keep-alive\n\n" if value is None else _event(name, value)
        except RedisUnavailable:
            # Headers are out: the stream just ends, and the client reconnects.
            return

    return StreamingResponse(events(), media_type="text/event-stream; charset=utf-8",
                             headers={"Cache-Control": "no-store"})


@router.websocket("/counters/{name}/live")
async def counter_live(websocket: WebSocket, name: CounterName) -> None:
    """Sends {"name", "value"} on each change; a text message "incr" adds one, as the POST does."""
    await websocket.accept()
    sender = asyncio.create_task(_send_values(websocket, name))
    try:
        while True:
            if await websocket.receive_text() == "incr":
                await redis_call(client().incr(counter_key(name)))
    except (WebSocketDisconnect, RedisUnavailable):
        pass
    finally:
        sender.cancel()


async def _send_values(websocket: WebSocket, name: str) -> None:
    try:
        async for value in watch.values_of(name):
            if value is not None:
                await websocket.send_text(orjson.dumps({"name": name, "value": value}).decode())
    except (WebSocketDisconnect, RedisUnavailable, RuntimeError):
        # The client went away, or Redis did: the receive loop ends the socket.
        return
