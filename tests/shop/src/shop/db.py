"""The shop's orders, in one SQLite file in the directory systemd gives the service
($STATE_DIRECTORY): the only place that outlives releases, restarts and reboots."""

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 2


def path() -> Path:
    return Path(os.environ["STATE_DIRECTORY"]) / "shop.db"


@contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    # Several workers (and, during a restart, two generations of them) write at once: wait for
    # the lock rather than fail. Autocommit: each statement is its own transaction.
    db = sqlite3.connect(path(), timeout=10, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def migrate() -> int:
    """Brings the schema to SCHEMA_VERSION; safe to run again. Returns the version."""
    with connect() as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if current < 1:
            db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL, "
                       "created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
            db.execute("INSERT INTO schema_version VALUES (1)")
        if current < 2:
            db.execute("CREATE TABLE slow_runs (tag TEXT NOT NULL, started TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
            db.execute("CREATE TABLE worker_log (event TEXT NOT NULL, release TEXT NOT NULL, pid INTEGER NOT NULL, "
                       "at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
            db.execute("ALTER TABLE orders ADD COLUMN fulfilled INTEGER NOT NULL DEFAULT 0")
            db.execute("INSERT INTO schema_version VALUES (2)")
        return SCHEMA_VERSION


def add_order(item: str) -> int:
    with connect() as db:
        return db.execute("INSERT INTO orders (item) VALUES (?)", (item,)).lastrowid


def count_orders(item: str | None = None) -> int:
    with connect() as db:
        if item is None:
            return db.execute("SELECT count(*) FROM orders").fetchone()[0]
        return db.execute("SELECT count(*) FROM orders WHERE item = ?", (item,)).fetchone()[0]


def record_slow_run(tag: str) -> None:
    with connect() as db:
        db.execute("INSERT INTO slow_runs (tag) VALUES (?)", (tag,))


def count_slow_runs(tag: str) -> int:
    with connect() as db:
        return db.execute("SELECT count(*) FROM slow_runs WHERE tag = ?", (tag,)).fetchone()[0]


def log_worker(event: str, release: str, pid: int) -> None:
    with connect() as db:
        db.execute("INSERT INTO worker_log (event, release, pid) VALUES (?, ?, ?)", (event, release, pid))


def fulfil_orders() -> int:
    """Marks every open order fulfilled; returns how many."""
    with connect() as db:
        return db.execute("UPDATE orders SET fulfilled = 1 WHERE fulfilled = 0").rowcount
