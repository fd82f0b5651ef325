"""Idempotency-Key (vmkit.idempotency) against a real redis-server: through gunicorn on the
example app's counter, and around a slow app of the test's own for the concurrent repeat."""

import asyncio

import httpx
import pytest

from support import Gunicorn, RedisServer
from vmkit import idempotency, redis as kit_redis, settings as kit_settings


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def api(tmp_path, redis):
    server = Gunicorn(tmp_path / "gunicorn.log", REDIS_URL=redis.url).start()
    try:
        yield server.wait_serving()
    finally:
        server.stop()


def test_a_post_with_a_key_runs_once_and_repeats_get_the_first_answer(api, redis):
    with api.client() as client:
        first = client.post("/counters/orders", headers={"idempotency-key": "order-1"})
        again = client.post("/counters/orders", headers={"idempotency-key": "order-1"})
        other = client.post("/counters/orders", headers={"idempotency-key": "order-2"})
        plain = client.post("/counters/orders")
    assert (first.status_code, first.json()) == (200, {"name": "orders", "value": 1})
    assert (again.status_code, again.json()) == (200, {"name": "orders", "value": 1})
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert other.json()["value"] == 2 and plain.json()["value"] == 3
    assert redis.command("GET", "api:counters:orders") == "3"


def test_the_same_key_for_another_request_is_422_and_a_bad_key_400(api):
    with api.client() as client:
        assert client.post("/counters/a", headers={"idempotency-key": "k-1"}).status_code == 200
        reused = client.post("/counters/b", headers={"idempotency-key": "k-1"})
        bad = client.post("/counters/a", headers={"idempotency-key": "no spaces allowed"})
        get = client.get("/health", headers={"idempotency-key": "ignored-for-get"})
    assert reused.status_code == 422 and "different request" in reused.json()["detail"]
    assert bad.status_code == 400
    assert get.status_code == 200


def test_a_validation_error_is_kept_but_a_5xx_releases_the_key(api, redis):
    with api.client() as client:
        invalid = client.post("/counters/BAD", headers={"idempotency-key": "v-1"})
        assert invalid.status_code == 422
        assert client.post("/counters/BAD", headers={"idempotency-key": "v-1"}).headers[
            "idempotent-replayed"] == "true"
        redis.stop()
        try:
            assert client.post("/counters/x", headers={"idempotency-key": "down-1"}).status_code == 503
        finally:
            redis.start()
        retried = client.post("/counters/x", headers={"idempotency-key": "down-1"})
    assert (retried.status_code, retried.json()["value"]) == (200, 1)


def test_a_concurrent_repeat_gets_409_and_the_app_runs_once(redis, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis.url)
    kit_settings.get_settings.cache_clear()
    kit_redis.client.cache_clear()
    runs = []

    async def scenario():
        started, finish = asyncio.Event(), asyncio.Event()

        async def slow_app(scope, receive, send):
            runs.append((await receive())["body"])
            started.set()
            await finish.wait()
            await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"created"})

        transport = httpx.ASGITransport(app=idempotency.Idempotency(slow_app))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            post = lambda: client.post("/things", content=b"{}", headers={"idempotency-key": "c-1"})  # noqa: E731
            first = asyncio.create_task(post())
            # The middleware claims the key before the app runs: the repeat comes while the first
            # is surely in progress (a fixed delay lost that race once on a busy machine).
            await asyncio.wait_for(started.wait(), 30)
            concurrent = await asyncio.wait_for(post(), 30)
            finish.set()
            done = await asyncio.wait_for(first, 30)
            replay = await post()
        await kit_redis.close_client()
        return first, concurrent, done, replay

    try:
        _, concurrent, done, replay = asyncio.run(scenario())
    finally:
        kit_settings.get_settings.cache_clear()
        kit_redis.client.cache_clear()
    assert concurrent.status_code == 409
    assert (done.status_code, done.text) == (201, "created")
    assert (replay.status_code, replay.text, replay.headers["idempotent-replayed"]) == (201, "created", "true")
    assert runs == [b"{}"]
