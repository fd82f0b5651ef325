"""JSON lines on stdout: journald stores one record per line and keeps the fields searchable."""

import logging
import os
import sys
import time
from contextvars import ContextVar

import orjson

# The X-Request-ID of the request the current task serves (set by vmkit.access), or None.
current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and belongs in the line.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# uvicorn repeats some messages with ANSI colour codes for terminals.
_SKIPPED_EXTRAS = frozenset({"color_message"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        # Read at format time: gunicorn's post_fork sets WORKER_ID after logging is configured.
        worker_id = os.environ.get("WORKER_ID")
        if worker_id is not None:
            line["worker_id"] = int(worker_id)
        request_id = current_request_id.get()
        if request_id is not None:
            line["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and key not in _SKIPPED_EXTRAS and key[0] != "_":
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str) -> None:
    """Route every logger (ours, uvicorn's, gunicorn's, apscheduler's) to one JSON handler."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "gunicorn.error", "apscheduler"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
