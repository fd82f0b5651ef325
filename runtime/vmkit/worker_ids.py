"""Stable small worker ids (0..N-1) for gunicorn workers, computed in the master.

gunicorn re-executes gunicorn.conf.py on every HUP, so which ids are taken is never recorded in
module globals (neither there nor here): it is derived from the arbiter's own table of live
workers (`arbiter.WORKERS`, pid -> worker object) plus two attributes that `assign_id` sets on
each worker object before the fork: `worker_id`, and `retiring` (set to True on the old
generation when a HUP reload starts). An id returns to the pool as soon as gunicorn drops the
worker from its table (the worker was reaped) or it is marked retiring.

Caveat: during a HUP reload the new generation reuses ids 0..N-1 while the old workers finish
their in-flight requests (up to graceful_timeout), so two live processes can briefly share an id;
the same holds across a USR2 binary upgrade (two masters, each numbering its own workers).
WORKER_ID is a label for logs and metrics, never a mutex.

The functions take plain worker-like objects so they can be tested without gunicorn.
"""

import os
from collections.abc import Iterable
from typing import Any

ENV_VAR = "WORKER_ID"

# The id assign_id() chose for the child of the master's next fork. Handed over by an at-fork
# hook rather than by gunicorn's post_fork, so that WORKER_ID is set from the child's very first
# instruction and even gunicorn's "Booting worker" line carries it.
_handoff: int | None = None


def _export_in_child() -> None:
    global _handoff
    if _handoff is not None:
        os.environ[ENV_VAR] = str(_handoff)
        _handoff = None


def _forget_in_parent() -> None:
    global _handoff
    _handoff = None


os.register_at_fork(after_in_child=_export_in_child, after_in_parent=_forget_in_parent)


def ids_in_use(workers: Iterable[Any]) -> set[int]:
    return {worker.worker_id for worker in workers if not worker.retiring}


def lowest_free_id(in_use: set[int]) -> int:
    candidate = 0
    while candidate in in_use:
        candidate += 1
    return candidate


def assign_id(worker: Any, live_workers: Iterable[Any]) -> int:
    """Called by the master just before it forks `worker`; the child starts with WORKER_ID set."""
    global _handoff
    worker.worker_id = lowest_free_id(ids_in_use(live_workers))
    worker.retiring = False
    _handoff = worker.worker_id
    return worker.worker_id


def mark_retiring(workers: Iterable[Any]) -> None:
    """A HUP reload starts N new workers before it stops the old ones: free the old ids now."""
    for worker in workers:
        worker.retiring = True


def retire_highest_ids_first(workers: Iterable[Any], new_count: int) -> None:
    """Make the workers holding ids >= new_count the oldest ones.

    When the worker count drops (TTOU), gunicorn stops the workers with the lowest `age`; were
    those simply the longest-running ones, the survivors could hold e.g. {1, 2} instead of {0, 1}.
    """
    workers = list(workers)
    doomed = sorted(
        (w for w in workers if w.worker_id >= new_count and not w.retiring),
        key=lambda w: w.worker_id,
        reverse=True,
    )
    if not doomed:
        return
    oldest = min(w.age for w in workers)
    for rank, worker in enumerate(doomed, start=1):
        worker.age = oldest - rank
