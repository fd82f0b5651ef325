"""The gunicorn worker class of the kit: uvicorn-worker's UvicornWorker, plus what every app gets
without writing it:
- a drain that loses no request (vmkit.draining);
- the request id on every log line, and one JSON access line per request unless API_ACCESS_LOG
  is off (vmkit.access);
- `Idempotency-Key` for POST and PATCH where there is Redis (vmkit.idempotency);
- 413 for bodies over API_MAX_BODY_BYTES (vmkit.body_limit), a 4xx instead of a 500 for hostile
  JSON (vmkit.bad_input);
- streams (SSE, NDJSON) that nginx passes on as they are written (vmkit.streams);
- request metrics by route template and status, and the worker's id, where API_METRICS_BIND is
  set (vmkit.request_metrics; the master serves them, see gunicorn.conf.py);
- a record of the uvicorn Config it runs, so the probes report the parser in use (vmkit.loop_and_parser).
"""

import sys

from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker

from vmkit import bad_input, loop_and_parser
from vmkit.access import AccessLog, RequestContext
from vmkit.body_limit import BodyLimit
from vmkit.draining import DrainingHttpToolsProtocol
from vmkit.idempotency import Idempotency
from vmkit.settings import get_settings
from vmkit.streams import Unbuffered


class Worker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "auto", "http": DrainingHttpToolsProtocol}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        loop_and_parser.server_config = self.config

    def load_wsgi(self) -> None:
        try:
            super().load_wsgi()
        except SystemExit:
            # The app refused to start (its settings rejected the environment and said why).
            # gunicorn would respawn a worker that exits otherwise, forever; this code stops it.
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        app = Unbuffered(bad_input.install(self.wsgi))
        settings = get_settings()
        if settings.redis_url:
            app = Idempotency(app)
        app = BodyLimit(app, settings.api_max_body_bytes)
        if settings.api_metrics_bind:
            # Imported only here: the module writes to PROMETHEUS_MULTIPROC_DIR as it loads.
            from vmkit import request_metrics

            # Outside BodyLimit and Idempotency, so their answers are counted too.
            app = request_metrics.instrument(app)
        if settings.api_access_log:
            app = AccessLog(app)
        self.wsgi = RequestContext(app)
