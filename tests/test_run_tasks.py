"""``biomedica_hf.executors`` (core layer): ``run_tasks`` over a real process pool survives dead workers (the pool
is started again, unfinished items retried, an item that always kills its worker given up), adapts items to the
executor's slots, and closes every executor it makes."""
from __future__ import annotations

import os
import time

import pytest

from biomedica_hf.executors import LocalExecutor, item_key, make_executor, run_tasks


def _echo(item):
    return item


def _die_on(item):
    if item == "die":
        os._exit(1)          # a worker killed (out of memory, SIGKILL): the pool breaks
    if item == "slow":
        time.sleep(1.0)      # still running when its neighbour kills the pool
    return item.upper()


class _Made(list):
    """The executors made, to check each was closed."""

    def make(self, workers: int):
        ex = make_executor("local", workers=workers)
        self.append(ex)
        return ex


def test_inline_run_binds_items_to_the_slots_and_closes():
    made = _Made()
    got = list(run_tasks(lambda: made.make(1), _echo, ["a", "b"], max_attempts=2, desc="t", progress=False,
                         bind=lambda it, slots: f"{it}/{slots}"))
    assert got == ["a/1", "b/1"]
    assert len(made) == 1
    assert made[0]._pool is None


@pytest.mark.multiprocess
def test_a_dead_worker_is_retried_then_its_item_given_up():
    made = _Made()
    got = list(run_tasks(lambda: made.make(2), _die_on, ["a", "die", "b"], max_attempts=2, desc="t", progress=False,
                         on_give_up=lambda it, n, err: f"gave up {it} after {n}: {err.split(':')[0]}"))
    assert sorted(got) == ["A", "B", "gave up die after 2: BrokenProcessPool"]
    assert len(made) >= 2                            # the pool was started again after the death
    assert all(isinstance(ex, LocalExecutor) and ex._pool is None for ex in made)   # each one closed


@pytest.mark.multiprocess
def test_an_innocent_neighbour_of_a_killer_finishes_instead_of_being_given_up():
    """Each death of the pool breaks both tasks (the slow one is still running): both are charged, and at the
    limit each is run alone once more, which finds the killer; the neighbour's work is not lost."""
    made = _Made()
    got = list(run_tasks(lambda: made.make(2), _die_on, ["die", "slow"], max_attempts=2, desc="t", progress=False,
                         on_give_up=lambda it, n, err: f"gave up {it} after {n}: {err.split(':')[0]}"))
    assert sorted(got) == ["SLOW", "gave up die after 2: BrokenProcessPool"]
    assert len(made) == 4                            # two shared deaths, then each suspect alone
    assert all(ex._pool is None for ex in made)


@pytest.mark.multiprocess
def test_without_give_up_the_death_is_raised():
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        list(run_tasks(lambda: make_executor("local", workers=2), _die_on, ["die"], max_attempts=1, desc="t",
                       progress=False))


def test_item_keys():
    class Task:
        key = "s000-train-p00001"

    assert item_key(Task()) == "s000-train-p00001"
    assert item_key("p") == "p"
    assert item_key(("p", 1)) == "p"


@pytest.mark.multiprocess
def test_closing_map_releases_the_pool_when_done_or_dropped():
    ex = make_executor("local", workers=2)
    assert sorted(ex.closing_map(_echo, ["a", "b", "c"])) == ["a", "b", "c"]
    assert ex._pool is None
    ex = make_executor("local", workers=2)
    it = ex.closing_map(_echo, ["a", "b", "c"])
    next(it)
    it.close()                                       # the caller stopped early
    assert ex._pool is None


def _freeze_count(_item):
    import gc

    return gc.get_freeze_count()


def test_workers_fork_from_a_frozen_heap_that_is_thawed_when_the_pool_closes():
    """A pool of 2+ workers forks from a heap the collector leaves alone (``gc.freeze``: a worker's collections never
    walk, so never copy, what it inherited); closing the last pool gives the objects back to the collector, nested
    freezes end with the outermost, and a pool of one (inline) freezes nothing."""
    import gc

    from biomedica_hf.executors import frozen_heap

    if gc.get_freeze_count():
        pytest.skip("an earlier test of this process left a pool open")
    with LocalExecutor(1) as inline:
        assert list(inline.map(_freeze_count, ["x"])) == [0]
    with make_executor("local", workers=2) as ex:
        assert gc.get_freeze_count() > 1000                  # the interpreter's and the test's objects
        assert min(ex.map(_freeze_count, ["a", "b", "c"])) > 1000
        with frozen_heap():
            with make_executor("local", workers=2) as inner:
                assert list(inner.map(_echo, ["i"])) == ["i"]
            assert gc.get_freeze_count() > 1000              # the outer pool is still open
    assert gc.get_freeze_count() == 0
