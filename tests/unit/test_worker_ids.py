"""The id allocation rules, replayed on plain objects the way gunicorn's arbiter drives them."""

import os
from types import SimpleNamespace

from vmkit import worker_ids


class Arbiter:
    """Just the parts of gunicorn's arbiter the hooks rely on: WORKERS and worker ages."""

    def __init__(self) -> None:
        self.workers: dict[int, SimpleNamespace] = {}
        self.age = 0
        self.next_pid = 100

    def spawn(self) -> SimpleNamespace:
        self.age += 1
        self.next_pid += 1
        worker = SimpleNamespace(age=self.age, pid=self.next_pid)
        worker_ids.assign_id(worker, self.workers.values())  # pre_fork
        self.workers[worker.pid] = worker
        return worker

    def reap(self, worker) -> None:
        del self.workers[worker.pid]

    def manage(self, count: int) -> None:
        """gunicorn's manage_workers: spawn up to count, then stop the lowest ages beyond it."""
        while len(self.workers) < count:
            self.spawn()
        for worker in sorted(self.workers.values(), key=lambda w: w.age)[: len(self.workers) - count]:
            self.reap(worker)

    def ids(self) -> list[int]:
        return sorted(w.worker_id for w in self.workers.values())


def test_lowest_free_id():
    assert worker_ids.lowest_free_id(set()) == 0
    assert worker_ids.lowest_free_id({0, 1, 3}) == 2
    assert worker_ids.lowest_free_id({1, 2}) == 0


def test_a_replacement_takes_the_id_of_the_worker_that_died():
    arbiter = Arbiter()
    arbiter.manage(4)
    assert arbiter.ids() == [0, 1, 2, 3]
    dead = next(w for w in arbiter.workers.values() if w.worker_id == 2)
    arbiter.reap(dead)
    assert arbiter.spawn().worker_id == 2


def test_shrinking_retires_the_highest_ids_even_when_they_are_the_youngest():
    arbiter = Arbiter()
    arbiter.manage(3)
    arbiter.reap(next(w for w in arbiter.workers.values() if w.worker_id == 2))
    arbiter.manage(3)  # id 2 is now the youngest worker
    worker_ids.retire_highest_ids_first(arbiter.workers.values(), 2)  # nworkers_changed
    arbiter.manage(2)
    assert arbiter.ids() == [0, 1]

    worker_ids.retire_highest_ids_first(arbiter.workers.values(), 1)
    arbiter.manage(1)
    assert arbiter.ids() == [0]


def test_growing_fills_in_from_the_top():
    arbiter = Arbiter()
    arbiter.manage(2)
    arbiter.manage(4)
    assert arbiter.ids() == [0, 1, 2, 3]


def test_a_reload_generation_reuses_the_ids_of_the_retiring_one():
    arbiter = Arbiter()
    arbiter.manage(3)
    old = list(arbiter.workers.values())
    worker_ids.mark_retiring(arbiter.workers.values())  # on_reload
    new = [arbiter.spawn() for _ in range(3)]
    # The brief overlap: both generations hold 0..2 until the old one has exited.
    assert sorted(w.worker_id for w in new) == [0, 1, 2]
    arbiter.manage(3)  # gunicorn stops the N oldest: the whole old generation
    assert list(arbiter.workers.values()) == new
    assert not any(worker in old for worker in arbiter.workers.values())
    assert arbiter.ids() == [0, 1, 2]


def test_a_worker_that_dies_during_a_reload_is_replaced_within_the_new_generation():
    arbiter = Arbiter()
    arbiter.manage(2)
    worker_ids.mark_retiring(arbiter.workers.values())
    first, second = arbiter.spawn(), arbiter.spawn()
    arbiter.reap(first)
    assert arbiter.spawn().worker_id == first.worker_id
    assert second.worker_id == 1


def test_the_id_reaches_the_child_of_the_next_fork_only():
    worker = SimpleNamespace(age=1)
    assigned = worker_ids.assign_id(worker, [SimpleNamespace(worker_id=0, retiring=False)])
    assert assigned == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: WORKER_ID must already be set, before any gunicorn code runs
        os.write(write, os.environ.get(worker_ids.ENV_VAR, "unset").encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"1"
    os.close(read)
    assert worker_ids.ENV_VAR not in os.environ  # the parent (the master) never carries an id

    pid = os.fork()  # a later fork without assign_id() hands nothing over
    if pid == 0:
        os._exit(0 if worker_ids.ENV_VAR not in os.environ else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
