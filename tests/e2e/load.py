"""Continuous HTTPS load from the controller while an operation runs on the host.

Every response is checked; the result lists each failure so a test can show why it failed.
"""

import asyncio
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Target:
    address: str  # the host's IP: the name below is not in any DNS
    server_name: str
    ca_file: str

    def client(self, **kwargs) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"https://{self.address}",
            verify=ssl.create_default_context(cafile=self.ca_file),
            headers={"Host": self.server_name},
            timeout=httpx.Timeout(30.0),
            **kwargs,
        )

    def extensions(self) -> dict:
        return {"sni_hostname": self.server_name}


@dataclass
class LoadResult:
    ok: int = 0
    posts_ok: int = 0  # 2xx answers to the POSTs: what the counter (or table) must hold
    failures: list[str] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)  # time.monotonic() of each failure
    versions: Counter = field(default_factory=Counter)
    retried: int = 0  # GETs sent again after the server closed their kept-alive connection unanswered

    def fail(self, what: str) -> None:
        self.failures.append(what)
        self.failed_at.append(time.monotonic())

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)


async def _get(client: httpx.AsyncClient, target: Target, path: str, result: LoadResult,
               retry_closed: bool) -> None:
    try:
        response = await client.get(path, extensions=target.extensions())
    except httpx.RemoteProtocolError:
        if not retry_closed:
            raise
        # The server closed the kept-alive connection before answering (nginx's old workers do
        # that to idle connections on reload). RFC 9112 9.3.1 lets a client send an idempotent
        # request again on a new connection, as browsers and Go's client do; httpx does not.
        result.retried += 1
        response = await client.get(path, extensions=target.extensions())
    body = response.json() if response.status_code == 200 else None
    if body is not None and body.get("status") == "ok":
        result.ok += 1
        result.versions[body.get("version")] += 1
    else:
        result.fail(f"GET {response.status_code}: {response.text[:200]}")


async def _post(client: httpx.AsyncClient, target: Target, post_path: str, post_json: dict | None,
                result: LoadResult) -> None:
    response = await client.post(post_path, json=post_json, extensions=target.extensions())
    if response.is_success:
        result.ok += 1
        result.posts_ok += 1
    else:
        result.fail(f"POST {response.status_code}: {response.text[:200]}")


async def _client_loop(target: Target, path: str, post_path: str | None, post_json: dict | None,
                       retry_closed: bool, stop: asyncio.Event, result: LoadResult) -> None:
    """Keep-alive requests until stopped: GET path, alternating with a POST to post_path."""
    sent = 0
    async with target.client() as client:
        while not stop.is_set():
            sent += 1
            try:
                if post_path and sent % 2 == 0:
                    await _post(client, target, post_path, post_json, result)
                else:
                    await _get(client, target, path, result, retry_closed)
            except (httpx.HTTPError, ValueError) as error:
                result.fail(f"{type(error).__name__}: {error}")


def run_under_load(
    target: Target,
    operation: Callable[[], object],
    *,
    path: str = "/health",
    counter: str | None = None,
    post_path: str | None = None,
    post_json: dict | None = None,
    clients: int = 16,
    min_requests: int = 3000,
    max_seconds: float = 300.0,
    retry_closed: bool = False,
) -> tuple[LoadResult, object]:
    """Start `clients` keep-alive clients, run `operation` once they are busy, keep the load up
    until the operation returned and at least `min_requests` were answered; return both results.
    With `post_path` (or `counter`, for the example app's POST /counters/<counter>), every other
    request is a POST there, which is not idempotent: each 2xx answer must have done its work
    exactly once; `post_json` is its JSON body. GETs of `path` must answer 200 with {"status": "ok", "version": ...}. With
    `retry_closed`, a GET whose kept-alive connection the server closed unanswered is sent once
    more, as HTTP allows (counted in `retried`)."""
    result = LoadResult()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def drive() -> None:
        posts = post_path or (f"/counters/{counter}" if counter else None)
        await asyncio.gather(*(_client_loop(target, path, posts, post_json, retry_closed, stop, result)
                               for _ in range(clients)))

    thread = threading.Thread(target=loop.run_until_complete, args=(drive(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + max_seconds
    try:
        while result.total < min(200, min_requests) and time.monotonic() < deadline:
            time.sleep(0.05)
        outcome = operation()
        while result.total < min_requests and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        loop.close()
    return result, outcome
