"""uvicorn's httptools protocol with a drain that loses no request (restart, reload, deploy and
max_requests recycling alike).

On shutdown uvicorn closes at once every connection without a request in flight
(`HttpToolsProtocol.shutdown`): nginx's idle kept-alive connections, which nginx may be writing a
request on at that very moment, and connections accepted but not read yet, whose request bytes
are already in the kernel. Either way the request is lost: nginx retries a GET on another
connection, but never a POST or PATCH (it cannot know whether the app saw it), which turns into a
502. This protocol drains instead:

- bytes a connection has received are always parsed and served;
- every request that starts after the drain began is answered with `Connection: close`, and the
  connection closes once that response is out, so nginx never puts it back into its cache;
- a request in flight whose headers are not sent yet gets `Connection: close` too; one whose
  headers already went out (without it) finishes, and its connection then counts as idle;
- an idle connection is closed only when its idle timer runs out: the keep-alive timer it already
  had (API_KEEPALIVE, longer than nginx's upstream idle timeout) or, for one that had none (just
  accepted), API_DRAIN_SECONDS, longer still. nginx drops idle connections first, so it is
  always nginx that closes them, never the worker under a request nginx is sending.

All of it ends well within API_GRACEFUL_TIMEOUT (the settings refuse any other order).

A response that runs for as long as its client stays (a stream of events) would hold the worker
until the graceful timeout kills it: `stopping()` is set when the drain begins, so such a stream
can end cleanly at once and let its client reconnect to a new worker.
"""

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vmkit.settings import get_settings


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    draining = False
    # One server per worker process: once it drains, so does a connection it accepts late.
    worker_draining = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if DrainingHttpToolsProtocol.worker_draining:
            self.shutdown()

    def shutdown(self) -> None:
        DrainingHttpToolsProtocol.worker_draining = True
        _stopping.set()
        self.draining = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.response_started:
                cycle.keep_alive = False
            return
        if self.timeout_keep_alive_task is None and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                get_settings().api_drain_seconds, self.timeout_keep_alive_handler
            )

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False


# One per worker process, like worker_draining.
_stopping = asyncio.Event()


def stopping() -> asyncio.Event:
    """Set once this worker has begun to drain (restart, reload, deploy, max_requests)."""
    return _stopping
