"""Where the tasks of a build (or an embedding run) execute: one interface, two engines.

* ``local`` - the default: a process pool on this machine (inline when ``workers == 1``).
* ``ray``   - an existing Ray cluster (``address="auto"`` / ``"ray://host:10001"``) or a local Ray
  instance (``address="local"``): tasks with resource hints (CPUs, GPUs) and retries of tasks whose
  worker died. Ray is an optional extra: ``pip install biomedica-hf[ray]``.

Both run the same task functions over the same task units, and tasks write their results with the
same atomic writes and completion markers, so a job started by one engine can be resumed by the
other and both produce identical outputs. Results stream back to the driver in completion order
(progress and the ledger are aggregated there). Ray workers must see the same file system paths
(a shared file system on a multi-node cluster).
"""
from __future__ import annotations

import abc
import logging
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)
EXECUTORS = ("local", "ray")
# initializer arguments, or a function of the number of task slots that returns them (so that a
# global limit, e.g. requests/s, can be split across the workers that run at the same time)
InitArgs = tuple | Callable[[int], tuple]


def _resolve(initargs: InitArgs, slots: int) -> tuple:
    return initargs(slots) if callable(initargs) else initargs


class Executor(abc.ABC):
    """Maps a module-level function over task units, ``window`` tasks in flight at most."""

    name: str
    slots: int  # tasks that run at the same time (used to split global limits such as request rates)

    @abc.abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, window: int | None = None) -> Iterator[Any]:
        """Results in completion order."""

    def close(self) -> None:
        """Release workers."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workers: int = 1, initializer: Callable | None = None, initargs: InitArgs = ()):
        self.slots = max(1, workers)
        initargs = _resolve(initargs, self.slots)
        self._pool = None
        if self.slots > 1:
            self._pool = ProcessPoolExecutor(self.slots, initializer=initializer, initargs=initargs)
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

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


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
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("--executor ray needs Ray: pip install 'biomedica-hf[ray]'") from e
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            if address in (None, "local"):
                ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
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

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(kind: str = "local", *, workers: int = 1, address: str | None = None,
                  initializer: Callable | None = None, initargs: InitArgs = (), num_gpus: float = 0) -> Executor:
    if kind == "local":
        return LocalExecutor(workers, initializer, initargs)
    if kind == "ray":
        return RayExecutor(address or "auto", num_gpus=num_gpus, initializer=initializer, initargs=initargs,
                           local_cpus=workers if address in (None, "local") else None)
    raise ValueError(f"unknown executor {kind!r}; one of {EXECUTORS}")
