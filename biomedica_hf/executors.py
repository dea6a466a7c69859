"""Where tasks execute, and how a list of them is run to the end: one interface, two engines (core layer: the
build, the concept labels and the panels use it without importing each other).

* ``local`` - the default: a process pool on this machine (inline when ``workers == 1``).
* ``ray``   - an existing Ray cluster (``address="auto"`` / ``"ray://host:10001"``) or a local Ray
  instance (``address="local"``): tasks with resource hints (CPUs, GPUs) and retries of tasks whose
  worker died. Ray is an optional extra: ``pip install biomedica-hf[ray]``. A job of several phases holds
  one Ray session for all of them (:func:`executor_session`).

:func:`run_tasks` runs a function over task items on a fresh executor and survives dead workers: the pool is
started again and the unfinished items are retried, a bounded number of times.

Both engines run the same task functions over the same task units, and tasks write their results with the
same atomic writes and completion markers, so a job started by one engine can be resumed by the
other and both produce identical outputs. Results stream back to the driver in completion order
(progress and the ledger are aggregated there). Ray workers must see the same file system paths
(a shared file system on a multi-node cluster).
"""
from __future__ import annotations

import abc
import gc
import logging
import threading
from collections import Counter
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
EXECUTORS = ("local", "ray")
# initializer arguments, or a function of the number of task slots that returns them (so that a
# global limit, e.g. requests/s, can be split across the workers that run at the same time)
InitArgs = tuple | Callable[[int], tuple]


def _resolve(initargs: InitArgs, slots: int) -> tuple:
    return initargs(slots) if callable(initargs) else initargs


class Executor(abc.ABC):
    """Maps a picklable function (module-level, or a task class's method) over task units, ``window`` tasks in
    flight at most."""

    name: str
    slots: int  # tasks that run at the same time (used to split global limits such as request rates)

    @abc.abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, window: int | None = None) -> Iterator[Any]:
        """Results in completion order."""

    def submit(self, fn: Callable[[Any], Any], item: Any) -> "Future | None":
        """Start ``fn(item)`` on a worker now; its future (``result()`` waits), or None where this executor runs
        tasks in the caller (one local worker): the caller runs it itself (:class:`StartedTask`)."""
        return None

    def close(self) -> None:
        """Release workers."""

    def closing_map(self, fn: Callable[[Any], Any], items: Iterable[Any], *,
                    window: int | None = None) -> Iterator[Any]:
        """:meth:`map`, then :meth:`close` (also when the caller stops early: the generator is closed)."""
        try:
            yield from self.map(fn, items, window=window)
        finally:
            self.close()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_FROZEN = {"depth": 0}
_FROZEN_LOCK = threading.Lock()


@contextmanager
def frozen_heap():
    """The objects that exist now are left out of the garbage collector (``gc.freeze``) until the outermost
    ``frozen_heap`` ends (``gc.unfreeze``): what Python's documentation advises before forking processes that share
    the parent's heap. A forked worker's collections then never walk (and so never copy, page by page) the thousands
    of objects it inherited: its first full collection cost 0.07-0.09 s in a fresh worker of the build (issue 28),
    and the build's own full collections walk only what it made. Nests; objects made inside stay collectable by
    the next collection after the outermost exit."""
    with _FROZEN_LOCK:
        gc.freeze()
        _FROZEN["depth"] += 1
    try:
        yield
    finally:
        with _FROZEN_LOCK:
            _FROZEN["depth"] -= 1
            if not _FROZEN["depth"]:
                gc.unfreeze()


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workers: int = 1, initializer: Callable | None = None, initargs: InitArgs = ()):
        self.slots = max(1, workers)
        initargs = _resolve(initargs, self.slots)
        self._pool = self._frozen = None
        if self.slots > 1:
            self._frozen = frozen_heap()          # the workers fork from a heap the collector leaves alone
            self._frozen.__enter__()
            try:
                self._pool = ProcessPoolExecutor(self.slots, initializer=initializer, initargs=initargs)
            except BaseException:
                self.close()                      # the heap is not left frozen
                raise
        elif initializer is not None:
            initializer(*initargs)

    def map(self, fn, items, *, window=None):
        if self._pool is None:
            for it in items:
                yield fn(it)
            return
        window = window or 4 * self.slots
        pending: set[Future] = set()
        for it in items:
            pending.add(self._pool.submit(fn, it))
            if len(pending) >= window:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)

    def submit(self, fn, item):
        return self._pool.submit(fn, item) if self._pool is not None else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._frozen is not None:
            self._frozen.__exit__(None, None, None)
            self._frozen = None


# Ray tasks run the initializer once per worker process (Ray reuses worker processes).
_INITIALIZED: set[int] = set()


def _ray_call(fn: Callable, item: Any, initializer: Callable | None, initargs: tuple, init_key: int) -> Any:
    if initializer is not None and init_key not in _INITIALIZED:
        initializer(*initargs)
        _INITIALIZED.add(init_key)
    return fn(item)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None = "auto", *, num_cpus: float = 1, num_gpus: float = 0,
                 max_retries: int = 3, initializer: Callable | None = None, initargs: InitArgs = (),
                 local_cpus: int | None = None):
        ray = _import_ray()
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            _ray_init(ray, address, local_cpus)
        cpus = ray.cluster_resources().get("CPU", 1)
        gpus = ray.cluster_resources().get("GPU", 0)
        self.slots = max(1, int(gpus // num_gpus) if num_gpus else int(cpus // max(num_cpus, 1e-9)))
        initargs = _resolve(initargs, self.slots)
        self._remote = ray.remote(_ray_call).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                                                     retry_exceptions=False)
        self._init = (initializer, initargs, hash((getattr(initializer, "__qualname__", ""), repr(initargs))))
        log.info("ray executor: %s slots, %s CPUs, %s GPUs", self.slots, cpus, gpus)

    def map(self, fn, items, *, window=None):
        ray = self._ray
        initializer, initargs, key = self._init
        fn_ref = ray.put(fn)
        args_ref = ray.put(initargs)
        window = window or 2 * self.slots
        pending = []
        for it in items:
            pending.append(self._remote.remote(fn_ref, it, initializer, args_ref, key))
            if len(pending) >= window:
                done, pending = ray.wait(pending, num_returns=1)
                yield from ray.get(done)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield from ray.get(done)

    def submit(self, fn, item):
        initializer, initargs, key = self._init
        return _RayFuture(self._ray, self._remote.remote(self._ray.put(fn), item, initializer,
                                                         self._ray.put(initargs), key))

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("--executor ray needs Ray: pip install 'biomedica-hf[ray]'") from e
    return ray


def _ray_target(address: str | None, workers: int) -> tuple[str, int | None]:
    """(address, CPUs of a local instance) for a Ray executor asked for ``address`` and ``workers``: no address is
    an existing cluster (``auto``); ``local`` starts an instance of ``workers`` CPUs."""
    return address or "auto", workers if address in (None, "local") else None


def _ray_init(ray: Any, address: str | None, local_cpus: int | None) -> None:
    if address in (None, "local"):
        ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


@contextmanager
def executor_session(kind: str = "local", *, workers: int = 1, address: str | None = None) -> Iterator[None]:
    """One session of ``kind`` for every executor that :func:`make_executor` makes inside it, for a job of several
    phases (the build: stage, near-duplicates, write, captions). ``ray``: Ray is initialised once here (a local
    instance started once, a cluster connected to once) and shut down at the end; each phase's executor finds it
    initialised and leaves it be, so Ray's worker processes, with the package imported, serve every phase. Without
    it each phase started and stopped its own local instance: ~5 s each, ~20 s of a small build (issue 28).
    ``local`` (or Ray already initialised by the caller): nothing to hold."""
    if kind != "ray":
        yield
        return
    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    _ray_init(ray, *_ray_target(address, workers))
    try:
        yield
    finally:
        ray.shutdown()


class _RayFuture:
    """A Ray object ref with a future's ``result()``."""

    def __init__(self, ray: Any, ref: Any) -> None:
        self._ray, self._ref = ray, ref

    def result(self) -> Any:
        return self._ray.get(self._ref)


def make_executor(kind: str = "local", *, workers: int = 1, address: str | None = None,
                  initializer: Callable | None = None, initargs: InitArgs = (), num_gpus: float = 0) -> Executor:
    if kind == "local":
        return LocalExecutor(workers, initializer, initargs)
    if kind == "ray":
        address, local_cpus = _ray_target(address, workers)
        return RayExecutor(address, num_gpus=num_gpus, initializer=initializer, initargs=initargs,
                           local_cpus=local_cpus)
    raise ValueError(f"unknown executor {kind!r}; one of {EXECUTORS}")


# ------------------------------------------------------------------------------- task running
def run_tasks(make: Callable[[], Executor], fn: Callable, items: list, *, max_attempts: int, desc: str,
              progress: bool, on_give_up: Callable[[Any, int, str], Any] | None = None,
              bind: Callable[[Any, int], Any] | None = None) -> Iterator[Any]:
    """Run ``fn`` over ``items``; a dead worker (``BrokenProcessPool``, Ray's crashed worker) restarts the
    pool and the tasks that were in flight are tried again, ``max_attempts`` times at most; then
    ``on_give_up(item, attempts, error)`` gives the item's result (without it the error is raised).

    A death breaks every unfinished task of the pool, so it cannot say which one killed the worker: each unfinished
    item is charged an attempt, and an item that reaches ``max_attempts`` while others were unfinished too is run
    once more *alone* before it is given up (then the death is its own: an innocent neighbour of an item that kills
    its worker every time finishes instead of being given up with it); that last run is not counted as an attempt.

    An item is keyed by its ``key`` attribute (a task object), else by itself (a string) or its first element.
    ``bind(item, slots)``, when given, adapts each item to the executor it runs on (e.g. a request rate shared
    by ``slots`` tasks at a time). Every executor made is closed."""
    attempts: Counter = Counter()
    remaining = list(items)
    suspects: list = []              # charged max_attempts in a death they shared: each run once more alone
    bar = tqdm(total=len(items), desc=desc, unit="part", disable=not progress)
    while remaining or suspects:
        alone = not remaining
        batch = [suspects.pop(0)] if alone else remaining
        executor = make()
        finished: set = set()
        try:
            bound = [bind(it, executor.slots) for it in batch] if bind is not None else batch
            for key, result in executor.map(_keyed, [(fn, it) for it in bound]):
                finished.add(key)
                bar.update(1)
                yield result
            if not alone:
                remaining = []
        except Exception as e:
            if not worker_died(e):
                raise
            log.warning("a worker died (%s: %s); retrying the unfinished partitions", type(e).__name__, e)
            unfinished = [it for it in batch if item_key(it) not in finished]
            if not alone:
                for it in unfinished:
                    attempts[item_key(it)] += 1
            spent = [it for it in unfinished if alone or attempts[item_key(it)] >= max_attempts]
            if len(unfinished) > 1:           # a shared death: who killed the worker is found by running alone
                suspects.extend(spent)
                spent = []
            for it in spent:
                if on_give_up is None:
                    raise
                bar.update(1)
                yield on_give_up(it, attempts[item_key(it)], f"{type(e).__name__}: {e}")
            if not alone:
                out = {item_key(it) for it in suspects} | {item_key(it) for it in spent}
                remaining = [it for it in unfinished if item_key(it) not in out]
        finally:
            executor.close()
    bar.close()


class StartedTask:
    """One task started now on an executor of its own and collected later (:meth:`result`), so that the caller
    works meanwhile: with 2+ workers the build's caption pass runs in a worker while the driver consolidates its
    tables. The same retries as :func:`run_tasks`: a dead worker gives the task to ``run_tasks`` for the attempts
    left. Where the executor runs tasks in the caller (one local worker) the task runs at once, here, as
    ``run_tasks`` would have run it. The executor is closed by :meth:`result` or :meth:`close` (also when the
    caller fails before collecting: a started local task is then waited for, never left writing)."""

    def __init__(self, make: Callable[[], Executor], fn: Callable, item: Any, *, max_attempts: int, desc: str):
        self._args = (make, fn, item, max_attempts, desc)
        self._executor: Executor | None = make()
        self._done = False
        try:
            self._future = self._executor.submit(_keyed, (fn, item))
            if self._future is None:                   # runs in the caller: now, in the order it was asked
                self._value = next(iter(run_tasks(lambda: self._executor, fn, [item], max_attempts=max_attempts,
                                                  desc=desc, progress=False)))
                self._done = True
        except BaseException:
            self.close()
            raise

    @property
    def done(self) -> bool:
        """Collected already (or run in the caller when it started)."""
        return self._done

    def result(self) -> Any:
        """The task's result (waits for it); a dead worker's task is run again, the attempts left at most."""
        if self._done:
            return self._value
        make, fn, item, max_attempts, desc = self._args
        try:
            _, value = self._future.result()
        except Exception as e:
            if not worker_died(e) or max_attempts <= 1:
                raise
            log.warning("a worker died (%s: %s); retrying %s", type(e).__name__, e, desc)
            self.close()
            value = next(iter(run_tasks(make, fn, [item], max_attempts=max_attempts - 1, desc=desc, progress=False)))
        finally:
            self.close()
        self._value, self._done = value, True
        return value

    def close(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.close()

    def __enter__(self) -> "StartedTask":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def item_key(item: Any) -> str:
    """A task item's identity across retries: its ``key``, the item itself (a string) or its first element."""
    key = getattr(item, "key", None)
    if key is not None:
        return key
    return item if isinstance(item, str) else item[0]


def _keyed(args: tuple) -> tuple[str, Any]:
    fn, item = args
    return item_key(item), fn(item)


def worker_died(e: BaseException) -> bool:
    """``e`` says a worker process died (not that a task raised): the pool's, or Ray's crashed worker."""
    if isinstance(e, BrokenProcessPool):
        return True
    name = type(e).__name__
    return name in {"WorkerCrashedError", "RayTaskError", "NodeDiedError", "OutOfMemoryError"} and \
        "FatalBuildError" not in str(e)
