"""vmkit.request_metrics in-process: the labels a request gets, for a real FastAPI app."""

import asyncio

import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY

from vmkit.request_metrics import UNMATCHED, RequestMetrics, route_template

router = APIRouter()


@router.get("/orders/{order_id}")
async def order(order_id: int) -> dict:
    return {"id": order_id}


@router.get("/orders/{order_id}/stream")
async def broken(order_id: int) -> dict:
    raise RuntimeError("the app fails before answering")


app = FastAPI()
app.include_router(router, prefix="/shop/{shop_id}")


def call(method: str, path: str) -> tuple[int | None, dict]:
    """Sends one request through RequestMetrics(app); the status it answered and its scope."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [], "client": ("127.0.0.1", 1), "server": ("t", 80)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def run():
        try:
            await RequestMetrics(app)(scope, receive, send)
        except RuntimeError:
            pass  # the server answers 500 after the app raised

    asyncio.run(run())
    starts = [message["status"] for message in sent if message["type"] == "http.response.start"]
    return (starts[0] if starts else None), scope


def count(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("api_request_duration_seconds_count", labels) or 0


@pytest.mark.parametrize(
    ("method", "path", "status", "route"),
    [
        # The template with the include's prefix, never the raw path: one series for all orders.
        ("GET", "/shop/7/orders/1", 200, "/shop/{shop_id}/orders/{order_id}"),
        ("GET", "/shop/8/orders/x", 422, "/shop/{shop_id}/orders/{order_id}"),
        ("DELETE", "/shop/7/orders/1", 405, "/shop/{shop_id}/orders/{order_id}"),
        ("GET", "/shop/7/nothing/here", 404, UNMATCHED),
    ],
)
def test_route_label_is_the_template_or_unmatched(method, path, status, route):
    answered, scope = call(method, path)
    assert answered == status
    assert route_template(scope) == route


def test_each_request_is_counted_once_under_bounded_labels():
    before = count("/shop/{shop_id}/orders/{order_id}", "GET", "200")
    call("GET", "/shop/1/orders/1")
    call("GET", "/shop/2/orders/2")
    assert count("/shop/{shop_id}/orders/{order_id}", "GET", "200") == before + 2

    # A method outside the usual ones shares one label value, whatever the client sends.
    before = count("/shop/{shop_id}/orders/{order_id}", "OTHER", "405")
    call("PROPFIND", "/shop/1/orders/1")
    assert count("/shop/{shop_id}/orders/{order_id}", "OTHER", "405") == before + 1


def test_an_app_that_raises_before_answering_counts_as_500_and_leaves_nothing_in_progress():
    before = count("/shop/{shop_id}/orders/{order_id}/stream", "GET", "500")
    call("GET", "/shop/1/orders/1/stream")
    assert count("/shop/{shop_id}/orders/{order_id}/stream", "GET", "500") == before + 1
    assert REGISTRY.get_sample_value("api_requests_in_progress") == 0


def test_lifespan_passes_untouched():
    seen = []

    async def inner(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(RequestMetrics(inner)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
