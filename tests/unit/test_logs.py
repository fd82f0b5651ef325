"""The JSON line format that journald stores."""

import json
import logging
import sys

from vmkit.logs import JsonFormatter, current_request_id


def _record(**extra) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "app.test", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": "hello %s", "args": ("world",)})
    record.__dict__.update(extra)
    return record


def test_one_json_object_with_extras_and_the_worker_id(monkeypatch):
    monkeypatch.setenv("WORKER_ID", "3")
    line = JsonFormatter().format(_record(method="GET", status=200, color_message="\x1b[36mhello"))
    assert "\n" not in line
    data = json.loads(line)
    assert data["msg"] == "hello world"
    assert data["level"] == "info"
    assert data["logger"] == "app.test"
    assert data["worker_id"] == 3
    assert (data["method"], data["status"]) == ("GET", 200)
    assert "color_message" not in data
    assert data["ts"].endswith("Z")


def test_no_worker_id_outside_workers_and_exceptions_inline(monkeypatch):
    monkeypatch.delenv("WORKER_ID", raising=False)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = _record(exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert "worker_id" not in data
    assert "ValueError: boom" in data["exc"]


def test_lines_logged_while_a_request_is_served_carry_its_id():
    token = current_request_id.set("req-42")
    try:
        inside = json.loads(JsonFormatter().format(_record()))
    finally:
        current_request_id.reset(token)
    outside = json.loads(JsonFormatter().format(_record()))
    assert inside["request_id"] == "req-42"
    assert "request_id" not in outside
