"""/large-response the way a FastAPI route usually returns JSON: a dict, serialised per request
by FastAPI's default path (jsonable_encoder, then JSONResponse's json.dumps). Only bench/bench.py
serves this, to compare against app.api's orjson bytes encoded once per size."""

from functools import lru_cache

from fastapi import FastAPI

from app.api import build_large_payload

app = FastAPI()
# Built once like app.api's, so the comparison measures serialisation only.
payload = lru_cache(maxsize=16)(build_large_payload)


@app.get("/large-response")
async def large_response(kb: int = 500):
    return payload(kb)
