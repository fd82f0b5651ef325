"""Hostile JSON to every route of the example app that takes a body, through a real gunicorn:
always a 4xx with a short answer, never a 500, and the worker keeps serving (vmkit.bad_input)."""

from collections.abc import Iterator

import pytest

from app.main import app as example_app
from support import Gunicorn, RedisServer

REPLY_LIMIT = 4096
HOSTILE_BODIES = {
    "nan": b'{"value": "x", "ttl": NaN}',
    "infinity": b'{"value": "x", "ttl": Infinity}',
    "minus-infinity": b'{"value": "x", "ttl": -Infinity}',
    "beyond-double": b'{"value": "x", "ttl": 1e999}',
    "huge-int": b'{"value": "x", "ttl": 123456789012345678901234567890123456789}',
    "int-beyond-python-limit": b'{"value": "x", "ttl": ' + b"9" * 5000 + b"}",
    "lone-surrogate": b'{"value": "\\ud800"}',
    "invalid-utf8": b'{"value": "\xff\xfe"}',
    "deep-nesting": b'{"value": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "one-mib-value": b'{"value": "' + b"x" * (1024 * 1024 - 20) + b'"}',
    "truncated": b'{"value": ',
    "not-an-object": b'"just a string"',
    "null": b"null",
    "wrong-types": b'{"value": {"nested": [1, 2, 3]}, "ttl": "soon", "extra": true}',
}


def body_routes() -> list[tuple[str, str]]:
    """(method, concrete path) of every operation of the app that takes a request body."""
    routes = []
    for path, operations in example_app.openapi()["paths"].items():
        for method, operation in operations.items():
            if method.upper() in ("POST", "PUT", "PATCH") or "requestBody" in operation:
                routes.append((method.upper(), path.replace("{key}", "k1").replace("{name}", "n1")))
    return routes


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Gunicorn]:
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    server = Gunicorn(tmp_path_factory.mktemp("api") / "gunicorn.log", REDIS_URL=redis.url).start()
    try:
        yield server.wait_serving()
    finally:
        server.stop()
        redis.stop()


def test_the_corpus_reaches_every_route_with_a_body():
    assert {("PUT", "/cache/k1"), ("POST", "/counters/n1")} <= set(body_routes())


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_hostile_json_gets_a_short_4xx_on_every_route(api, name):
    with api.client() as client:
        for method, path in body_routes():
            response = client.request(method, path, content=HOSTILE_BODIES[name],
                                      headers={"content-type": "application/json"})
            assert 400 <= response.status_code < 500 or (path.startswith("/counters")
                                                          and response.status_code == 200), (
                f"{method} {path} with {name}: {response.status_code} {response.text[:300]}")
            assert len(response.content) <= REPLY_LIMIT, f"{method} {path} with {name}: {len(response.content)} bytes"
        assert client.get("/health").status_code == 200
    assert not [line for line in api.log_lines() if line.get("status") == 500]


def test_a_validation_error_names_the_field_and_shows_only_a_bounded_input(api):
    with api.client() as client:
        response = client.put("/cache/k1", json={"value": "y" * 100_000, "ttl": 10})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "value"]
    assert error["input"] == "y" * 64 + "…"


def test_a_number_too_large_for_json_encoders_is_shown_shortened(api):
    with api.client() as client:
        response = client.put("/cache/k1", content=b'{"value": "x", "ttl": 123456789012345678901234567890}',
                              headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["input"] == "123456789012345678901234567890…"
