"""ASGI_APP=shop.web:api: an app that knows nothing of the kit. One probe route (/healthz, for
liveness and readiness alike), its orders in SQLite (shop.db), non-idempotent POSTs."""

import asyncio
import os
import sqlite3
from importlib.metadata import version

from fastapi import FastAPI, Path
from fastapi.responses import JSONResponse

from shop import db

api = FastAPI(title="shop")

PRICES = {"apple": 30, "pear": 45}
VERSION = os.environ.get("APP_VERSION") or version("shop")
Item = Path(pattern=r"^[a-z0-9-]{1,40}$")


@api.get("/healthz")
async def healthz() -> JSONResponse:
    try:
        await asyncio.to_thread(db.count_orders)
    except sqlite3.Error as error:
        return JSONResponse({"status": "error", "error": str(error)}, status_code=503)
    return JSONResponse({"status": "ok", "version": VERSION})


@api.get("/prices/{item}")
async def price(item: str = Item) -> dict:
    return {"item": item, "cents": PRICES.get(item)}


@api.post("/orders/{item}", status_code=201)
async def order(item: str = Item) -> dict:
    """Not idempotent: every request that gets 201 adds one row."""
    return {"id": await asyncio.to_thread(db.add_order, item), "item": item}


@api.get("/orders/{item}")
async def orders(item: str = Item) -> dict:
    return {"item": item, "count": await asyncio.to_thread(db.count_orders, item)}

