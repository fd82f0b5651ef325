"""The shop's orders, in one SQLite file in the directory systemd gives the service
($STATE_DIRECTORY): the only place that outlives releases, restarts and reboots."""

import os
import sqlite3
import threading
from pathlib import Path

SCHEMA_VERSION = 2
_thread = threading.local()


def path() -> Path:
    return Path(os.environ["STATE_DIRECTORY"]) / "shop.db"


def connection() -> sqlite3.Connection:
    """This thread's connection, opened once and kept open. In WAL mode the last connection to
    close cleans up the WAL while holding an exclusive lock, and a connection that opens meanwhile
    gets "database is locked" at once, without waiting out its busy timeout (sqlite.org/wal.html,
    "Sometimes Queries Return SQLITE_BUSY In WAL Mode"). Opened per request, the connections all
    closed whenever no request was running, as during a restart. Kept open, some process always
    holds one. Several workers (and during a restart two generations of them) write at once, so
    each waits for the lock rather than fail. Autocommit: each statement is its own transaction."""
    db = getattr(_thread, "db", None)
    if db is None:
        db = _thread.db = sqlite3.connect(path(), timeout=10, isolation_level=None)
    return db


def migrate() -> int:
    """Brings the schema to SCHEMA_VERSION; safe to run again. Returns the version."""
    db = connection()
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
    return connection().execute("INSERT INTO orders (item) VALUES (?)", (item,)).lastrowid


def count_orders(item: str | None = None) -> int:
    db = connection()
    if item is None:
        return db.execute("SELECT count(*) FROM orders").fetchone()[0]
    return db.execute("SELECT count(*) FROM orders WHERE item = ?", (item,)).fetchone()[0]


def record_slow_run(tag: str) -> None:
    connection().execute("INSERT INTO slow_runs (tag) VALUES (?)", (tag,))


def count_slow_runs(tag: str) -> int:
    return connection().execute("SELECT count(*) FROM slow_runs WHERE tag = ?", (tag,)).fetchone()[0]


def log_worker(event: str, release: str, pid: int) -> None:
    connection().execute("INSERT INTO worker_log (event, release, pid) VALUES (?, ?, ?)", (event, release, pid))


def fulfil_orders() -> int:
    """Marks every open order fulfilled; returns how many."""
    return connection().execute("UPDATE orders SET fulfilled = 1 WHERE fulfilled = 0").rowcount
