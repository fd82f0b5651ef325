"""ASGI_APP=shop.web:api: an app that knows nothing of the kit. One probe route (/healthz, for
liveness and readiness alike), its orders in SQLite (shop.db), non-idempotent POSTs, streams of
the three kinds a proxy can hold back, a slow request that counts its runs, a WebSocket."""

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Annotated

from fastapi import FastAPI, Path, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse

from shop import db

api = FastAPI(title="shop")

PRICES = {"apple": 30, "pear": 45}
VERSION = os.environ.get("APP_VERSION") or version("shop")
Item = Annotated[str, Path(pattern=r"^[a-z0-9-]{1,40}$")]


@api.get("/healthz")
async def healthz() -> JSONResponse:
    try:
        await asyncio.to_thread(db.count_orders)
    except sqlite3.Error as error:
        return JSONResponse({"status": "error", "error": str(error)}, status_code=503)
    return JSONResponse({"status": "ok", "version": VERSION})


@api.get("/prices/{item}")
async def price(item: Item) -> dict:
    return {"item": item, "cents": PRICES.get(item)}


@api.post("/orders/{item}", status_code=201)
async def order(item: Item) -> dict:
    """Not idempotent: every request that gets 201 adds one row."""
    return {"id": await asyncio.to_thread(db.add_order, item), "item": item}


@api.get("/orders/{item}")
async def orders(item: Item) -> dict:
    return {"item": item, "count": await asyncio.to_thread(db.count_orders, item)}


# What each stream kind looks like on the wire, and the media type it is sent with (SSE with a
# charset parameter, as many frameworks send it: a known trap for proxies matching the type).
STREAMS = {
    "sse": ("text/event-stream; charset=utf-8", "data: {}\n\n"),
    "ndjson": ("application/x-ndjson", '{{"n": {}}}\n'),
    # A type nginx compresses: unbuffered only because the app asks for it.
    "json": ("application/json", '{{"n": {}}}\n'),
}


@api.get("/stream/{kind}")
async def stream(kind: str = Path(pattern="^(sse|ndjson|json)$"), count: int = Query(8, ge=1, le=1000),
                 interval: float = Query(0.5, ge=0, le=30)) -> StreamingResponse:
    media_type, template = STREAMS[kind]

    async def events() -> AsyncIterator[str]:
        for n in range(count):
            if n:
                await asyncio.sleep(interval)
            yield template.format(n)

    headers = {"X-Accel-Buffering": "no"} if kind == "json" else {}
    return StreamingResponse(events(), media_type=media_type, headers=headers)


@api.get("/slow/{tag}")
async def slow(tag: Item, seconds: Annotated[float, Query(ge=0, le=600)]) -> dict:
    """Records that it ran before it waits: a proxy that sends it twice shows as two runs."""
    await asyncio.to_thread(db.record_slow_run, tag)
    await asyncio.sleep(seconds)
    return {"tag": tag, "seconds": seconds}


@api.get("/slow/{tag}/runs")
async def slow_runs(tag: Item) -> dict:
    return {"tag": tag, "runs": await asyncio.to_thread(db.count_slow_runs, tag)}


@api.websocket("/ws/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass
