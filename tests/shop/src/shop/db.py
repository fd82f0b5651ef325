"""The shop's orders, in one SQLite file in the directory systemd gives the service
($STATE_DIRECTORY): the only place that outlives releases, restarts and reboots."""

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 1


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
        return SCHEMA_VERSION


def add_order(item: str) -> int:
    with connect() as db:
        return db.execute("INSERT INTO orders (item) VALUES (?)", (item,)).lastrowid


def count_orders(item: str | None = None) -> int:
    with connect() as db:
        if item is None:
            return db.execute("SELECT count(*) FROM orders").fetchone()[0]
        return db.execute("SELECT count(*) FROM orders WHERE item = ?", (item,)).fetchone()[0]

