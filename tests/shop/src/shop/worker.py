"""`python -m shop.worker`: the shop's background process (api_processes). Fulfils new orders
every second, and notes in worker_log when it starts and when it stops, with its release and pid:
a stop on SIGTERM finishes the round at hand and is noted, a kill is not."""

import os
import signal
import threading

from shop import db

ROUND_SECONDS = 1.0


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    release, pid = os.environ.get("RELEASE_ID", ""), os.getpid()
    db.log_worker("started", release, pid)
    while not stop.wait(ROUND_SECONDS):
        db.fulfil_orders()
    db.log_worker("stopped", release, pid)


if __name__ == "__main__":
    main()
