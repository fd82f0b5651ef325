"""ASGI_APP=shop.web:api"""

from fastapi import FastAPI, Path

from vmkit import probes

api = FastAPI(title="shop")
api.include_router(probes.router)

PRICES = {"apple": 30, "pear": 45}


@api.get("/prices/{item}")
async def price(item: str = Path(pattern=r"^[a-z]{1,20}$")) -> dict:
    return {"item": item, "cents": PRICES.get(item)}
