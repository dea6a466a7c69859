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


def _die_once(path):
    """Kills its worker the first time (a marker file remembers), then returns its worker's pid."""
    if not os.path.exists(path):
        open(path, "w").close()
        os._exit(1)
    return os.getpid()


def test_started_task_with_one_worker_runs_at_once_in_the_caller(tmp_path):
    """One local worker runs tasks in the caller: the task has run when start returns, in the order asked."""
    from biomedica_hf.executors import StartedTask

    made = _Made()
    marker = tmp_path / "ran"
    with StartedTask(lambda: made.make(1), _touch, str(marker), max_attempts=2, desc="t") as started:
        assert marker.exists() and started.done      # before anything else runs
        assert started.result() == os.getpid()
        assert started.result() == os.getpid()       # collected once, kept
    assert len(made) == 1 and made[0]._pool is None


def _touch(path):
    open(path, "w").close()
    return os.getpid()


@pytest.mark.multiprocess
def test_started_task_runs_in_a_worker_while_the_caller_works_and_closes_its_pool(tmp_path):
    from biomedica_hf.executors import StartedTask

    made = _Made()
    started = StartedTask(lambda: made.make(2), _sleep_then_pid, "0.5", max_attempts=2, desc="t")
    t0 = time.monotonic()
    busy = sum(i * i for i in range(200_000))        # the caller's own work, meanwhile
    assert busy and time.monotonic() - t0 < 0.5 and not started.done
    pid = started.result()
    assert pid != os.getpid()
    assert time.monotonic() - t0 >= 0.45             # result() waited for the worker's task
    assert made[0]._pool is None                     # closed by result()


def _sleep_then_pid(seconds: str):
    time.sleep(float(seconds))
    return os.getpid()


@pytest.mark.multiprocess
def test_started_task_whose_worker_dies_is_run_again_then_the_death_is_raised(tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    from biomedica_hf.executors import StartedTask

    made = _Made()
    started = StartedTask(lambda: made.make(2), _die_once, str(tmp_path / "died"), max_attempts=2, desc="t")
    assert started.result() != os.getpid()           # the second attempt, in a new pool
    assert len(made) == 2 and all(ex._pool is None for ex in made)
    with pytest.raises(BrokenProcessPool):           # one attempt allowed: the death is the caller's to see
        StartedTask(lambda: made.make(2), _die_on, "die", max_attempts=1, desc="t").result()
    assert all(ex._pool is None for ex in made)


@pytest.mark.multiprocess
def test_a_started_task_never_collected_is_waited_for_when_closed(tmp_path):
    """A caller that fails before collecting closes the task: its pool is shut down after the task ended (a
    started pass is never left writing into the folder behind a failed build)."""
    from biomedica_hf.executors import StartedTask

    made = _Made()
    marker = tmp_path / "late"
    with pytest.raises(RuntimeError):
        with StartedTask(lambda: made.make(2), _sleep_then_touch, str(marker), max_attempts=2, desc="t"):
            raise RuntimeError("the caller failed")
    assert marker.exists()
    assert made[0]._pool is None


def _sleep_then_touch(path):
    time.sleep(0.3)
    open(path, "w").close()
    return path
