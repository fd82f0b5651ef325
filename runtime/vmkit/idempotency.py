"""`Idempotency-Key` for every POST and PATCH route of an app, kept in Redis: with the header, a
request runs at most once per key, so a client may retry it safely after any failure.

- first request with a key: claimed in Redis (SET NX, IDEMPOTENCY_TTL_SECONDS), run, and its
  response (status, headers, body) stored under the key;
- a repeat of the same request (same method, path, query and body): the stored response again,
  with `Idempotent-Replayed: true`, and the app does not run;
- a repeat while the first is still running: 409, the client retries later;
- the same key with another request: 422;
- a response of 500 or above is not kept: the key is released, so a retry runs the request again
  (a 5xx from the kit means nothing was done; an app's own 500 is a bug to fix);
- Redis unavailable: 503 (507 when the data Redis is full), and the app does not run.

The kit's worker puts this in front of every app when REDIS_URL is set; without Redis the header
is not honoured (docs/architecture.md says so).
"""

import base64
import hashlib
import logging
import re

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmkit.asgi import read_body, replaying, send_json
from vmkit.redis import RedisUnavailable, client, redis_call
from vmkit.settings import get_settings

log = logging.getLogger("vmkit.idempotency")

METHODS = frozenset({"POST", "PATCH"})
KEY_PATTERN = re.compile(rb"^[A-Za-z0-9_.:-]{1,128}$")
# Headers of the first response that are about that one connection, not the result.
_NOT_REPLAYED = frozenset({b"connection", b"date", b"server", b"transfer-encoding"})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def fingerprint(scope: Scope, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (scope["method"].encode(), scope.get("raw_path") or scope["path"].encode(),
                 scope.get("query_string", b""), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


class Idempotency:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS:
            await self.app(scope, receive, send)
            return
        key = _header(scope, b"idempotency-key")
        if key is None:
            await self.app(scope, receive, send)
            return
        if not KEY_PATTERN.match(key):
            await send_json(send, 400, {"detail": "Idempotency-Key must be 1-128 characters of "
                                              "letters, digits and _ . : -"})
            return
        body = await read_body(receive)
        if body is None:
            return
        settings = get_settings()
        redis_key = f"{settings.redis_key_prefix}idempotency:{key.decode()}"
        request_fingerprint = fingerprint(scope, body)
        try:
            claimed = await redis_call(client().set(
                redis_key, orjson.dumps({"fingerprint": request_fingerprint}),
                nx=True, ex=settings.idempotency_ttl_seconds))
            if not claimed:
                await self._answer_repeat(redis_key, request_fingerprint, send)
                return
        except RedisUnavailable as error:
            await send_json(send, error.status, {"detail": error.detail})
            return
        await self._run_once(scope, body, receive, send, redis_key, request_fingerprint)

    async def _answer_repeat(self, redis_key: str, request_fingerprint: str, send: Send) -> None:
        stored = await redis_call(client().get(redis_key))
        record = orjson.loads(stored) if stored else {}
        if record and record.get("fingerprint") != request_fingerprint:
            await send_json(send, 422, {"detail": "Idempotency-Key was used for a different request"})
            return
        if "status" not in record:  # still running (or released a moment ago: a retry may claim it)
            await send_json(send, 409, {"detail": "request with this Idempotency-Key in progress"})
            return
        headers = [(name.encode("latin-1"), value.encode("latin-1"))
                   for name, value in record["headers"]]
        headers.append((b"idempotent-replayed", b"true"))
        await send({"type": "http.response.start", "status": record["status"], "headers": headers})
        await send({"type": "http.response.body", "body": base64.b64decode(record["body"])})

    async def _run_once(self, scope: Scope, body: bytes, receive: Receive, send: Send,
                        redis_key: str, request_fingerprint: str) -> None:
        response: dict = {"status": 500, "headers": [], "body": []}

        async def send_and_keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["headers"] = [
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in message.get("headers", []) if name.lower() not in _NOT_REPLAYED
                ]
            elif message["type"] == "http.response.body":
                response["body"].append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replaying(body, receive), send_and_keep)
        except BaseException:
            await self._release(redis_key)
            raise
        if response["status"] >= 500:
            await self._release(redis_key)
            return
        record = {"fingerprint": request_fingerprint, "status": response["status"],
                  "headers": response["headers"],
                  "body": base64.b64encode(b"".join(response["body"])).decode()}
        try:
            await redis_call(client().set(redis_key, orjson.dumps(record), xx=True,
                                          keepttl=True))
        except RedisUnavailable as error:
            # The request ran; a repeat now gets 409 until the claim expires, never a second run.
            log.warning("could not store the response of an idempotent request",
                        extra={"error": str(error)})

    async def _release(self, redis_key: str) -> None:
        try:
            await redis_call(client().delete(redis_key))
        except RedisUnavailable as error:
            log.warning("could not release an idempotency key; it expires by itself",
                        extra={"error": str(error)})
