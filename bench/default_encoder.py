"""/large-response the way a FastAPI route usually returns JSON: a dict, serialised per request
by FastAPI's default path (jsonable_encoder, then JSONResponse's json.dumps). Only bench/bench.py
serves this, to compare against app.api's route, which serialises the same dict with orjson."""

from fastapi import FastAPI

from app.api import build_large_payload

app = FastAPI()


@app.get("/large-response")
async def large_response(kb: int = 500):
    # The same cached dict as app.api's route: the comparison measures serialisation only.
    return build_large_payload(kb)
